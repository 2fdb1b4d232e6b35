//! Identities and numbers of the event log: [`StreamId`], [`StreamVersion`], [`GlobalPosition`]
//! and [`ExpectedVersion`].
//!
//! They are newtypes so that a stream version can never be passed where a global position is
//! expected: the two count different things (events of one stream, events of the whole log).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stream id that cannot be used. Fix the id; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidStreamId {
    /// The id is empty.
    #[error("stream id is empty")]
    Empty,
    /// The id is longer than the limit.
    #[error("stream id is {length} bytes, over the limit of {limit}")]
    TooLong {
        /// Length of the rejected id in bytes.
        length: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The id holds a control character (newline, NUL, ...).
    #[error("stream id {id:?} contains a control character")]
    ControlCharacter {
        /// The rejected id.
        id: String,
    },
}

/// The longest stream id accepted, in bytes.
pub const MAX_STREAM_ID_BYTES: usize = 255;

/// The identity of one stream: the events of one aggregate instance, e.g. `deal-42`.
///
/// Valid ids are 1 to [`MAX_STREAM_ID_BYTES`] bytes of text with no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// Checks and wraps a stream id.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidStreamId> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidStreamId::Empty);
        }
        if id.len() > MAX_STREAM_ID_BYTES {
            return Err(InvalidStreamId::TooLong {
                length: id.len(),
                limit: MAX_STREAM_ID_BYTES,
            });
        }
        if id.chars().any(char::is_control) {
            return Err(InvalidStreamId::ControlCharacter { id });
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = InvalidStreamId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for StreamId {
    type Error = InvalidStreamId;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamId> for String {
    fn from(id: StreamId) -> Self {
        id.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The version of a stream: how many events it holds. The first event of a stream has version 1;
/// a stream with no events is at version 0 ([`StreamVersion::INITIAL`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct StreamVersion(pub u64);

impl StreamVersion {
    /// The version of a stream before its first event.
    pub const INITIAL: StreamVersion = StreamVersion(0);

    /// The version after `n` more events.
    pub fn advanced_by(self, n: u64) -> StreamVersion {
        StreamVersion(self.0 + n)
    }

    /// The next version.
    pub fn next(self) -> StreamVersion {
        self.advanced_by(1)
    }
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The position of an event in the global log, across all streams. Positions grow with every
/// append but may have holes (rolled-back transactions), and in PostgreSQL a higher position can
/// commit before a lower one: read the log with a gap-aware reader, never by number alone.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct GlobalPosition(pub i64);

impl GlobalPosition {
    /// The position before the first event of the log.
    pub const START: GlobalPosition = GlobalPosition(0);
}

impl fmt::Display for GlobalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the writer believes about a stream when it appends: the optimistic concurrency check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds; never a conflict for the caller (the store retries a
    /// version race itself).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist (hold at least one event).
    StreamExists,
    /// The stream must be exactly at this version ([`StreamVersion::INITIAL`] means no events).
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (None: no events) satisfies this expectation.
    pub fn is_satisfied_by(self, actual: Option<StreamVersion>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::StreamExists => actual.is_some(),
            ExpectedVersion::Exact(v) => actual.unwrap_or(StreamVersion::INITIAL) == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_validated() {
        assert_eq!(StreamId::new(""), Err(InvalidStreamId::Empty));
        assert!(matches!(
            StreamId::new("x".repeat(256)),
            Err(InvalidStreamId::TooLong { length: 256, .. })
        ));
        assert!(matches!(
            StreamId::new("a\nb"),
            Err(InvalidStreamId::ControlCharacter { .. })
        ));
        assert_eq!(
            StreamId::new("deal-1").map(String::from),
            Ok("deal-1".into())
        );
        assert!(serde_json::from_str::<StreamId>("\"\"").is_err());
    }

    #[test]
    fn expected_versions() {
        let v = |n| Some(StreamVersion(n));
        assert!(ExpectedVersion::NoStream.is_satisfied_by(None));
        assert!(!ExpectedVersion::NoStream.is_satisfied_by(v(1)));
        assert!(ExpectedVersion::StreamExists.is_satisfied_by(v(3)));
        assert!(!ExpectedVersion::StreamExists.is_satisfied_by(None));
        assert!(ExpectedVersion::Exact(StreamVersion(0)).is_satisfied_by(None));
        assert!(ExpectedVersion::Exact(StreamVersion(3)).is_satisfied_by(v(3)));
        assert!(!ExpectedVersion::Exact(StreamVersion(2)).is_satisfied_by(v(3)));
    }
}
