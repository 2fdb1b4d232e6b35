//! Identities and numbers of the event log: [`StreamId`], [`StreamVersion`], [`GlobalPosition`]
//! and [`ExpectedVersion`].
//!
//! They are newtypes so that a stream version can never be passed where a global position is
//! expected: the two count different things (events of one stream, events of the whole log).
//!
//! A stream id is read by people (in `status`, dead letters, errors) as well as by code, so
//! [`StreamId::new`] refuses characters that would make it look like another id or like nothing:
//! control characters, bidirectional overrides and isolates (the "Trojan Source" trick,
//! CVE-2021-42574: `deal-\u{202e}1-tnuocca` shows as `deal-account-1`), zero-width and other
//! invisible format characters. Ids stored before that check still read back
//! ([`StreamId::from_stored`]); tables for people show them through [`escape_for_display`].

use std::borrow::Cow;
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
    /// The id holds a control character (newline, NUL, ...). Remove it; nothing was written.
    #[error("stream id \"{}\" contains a control character", escape_for_display(.id))]
    ControlCharacter {
        /// The rejected id.
        id: String,
    },
    /// The id holds a character that is invisible or reorders the text around it (a
    /// bidirectional override or isolate, a zero-width space or joiner, a byte order mark, ...),
    /// so that a person would read another id than the one stored. Remove it; nothing was
    /// written.
    #[error(
        "stream id \"{}\" contains {}, an invisible or text-reordering character: a person would read another id; remove it",
        escape_for_display(.id),
        code_point(*.character)
    )]
    InvisibleCharacter {
        /// The rejected id.
        id: String,
        /// The first such character in it.
        character: char,
    },
}

fn code_point(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// Whether a character would deceive a reader of a stream id: invisible, zero-width, or
/// reordering the text around it. Control characters (`char::is_control`) are checked on their
/// own.
///
/// The set: Unicode's format characters (general category Cf: the bidirectional embeddings,
/// overrides and isolates U+202A..U+202E and U+2066..U+2069, the marks U+200E, U+200F and
/// U+061C, the zero-width U+200B..U+200D, U+2060..U+2064, the byte order mark U+FEFF, the soft
/// hyphen, the tag characters U+E0000..U+E007F, ...), the line and paragraph separators, and
/// characters that render as empty space (the Hangul fillers, the combining grapheme joiner).
fn is_invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0x3164
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE007F
    )
}

/// Whether `c` is shown escaped by [`escape_for_display`].
fn needs_escape(c: char) -> bool {
    c.is_control() || is_invisible(c)
}

/// `text` as a person should see it: unchanged when it holds no control or invisible
/// character; otherwise with each of them written as Rust writes it in a string (`\u{202e}`,
/// `\n`) and each backslash doubled, so the escapes cannot be confused with the text. Use it
/// wherever an id or a value read from storage is shown to people (the CLI's tables do).
///
/// ```
/// assert_eq!(es_core::escape_for_display("deal-1"), "deal-1");
/// assert_eq!(es_core::escape_for_display("deal-\u{202e}1\\x"), "deal-\\u{202e}1\\\\x");
/// ```
pub fn escape_for_display(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The longest stream id accepted, in bytes.
pub const MAX_STREAM_ID_BYTES: usize = 255;

/// The identity of one stream: the events of one aggregate instance, e.g. `deal-42`.
///
/// Valid ids are 1 to [`MAX_STREAM_ID_BYTES`] bytes of text with no control characters and no
/// invisible or text-reordering characters (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// Checks and wraps a stream id: the check for every new id, the one an append writes.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidStreamId> {
        let id = Self::from_stored(id)?.0;
        if let Some(character) = id.chars().find(|&c| is_invisible(c)) {
            return Err(InvalidStreamId::InvisibleCharacter { id, character });
        }
        Ok(Self(id))
    }

    /// Wraps a stream id read back from a store. It checks only what every stored id met when
    /// it was written (1 to [`MAX_STREAM_ID_BYTES`] bytes, no control character), so that ids
    /// stored before [`StreamId::new`] refused invisible characters still read: refusing them
    /// here would stop every reader of the log at the first one. Show such ids to people
    /// through [`escape_for_display`]. Stores use it; applications use [`StreamId::new`].
    pub fn from_stored(id: impl Into<String>) -> Result<Self, InvalidStreamId> {
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
    fn invisible_and_reordering_characters_are_refused_and_shown_escaped() {
        for c in [
            '\u{202a}',
            '\u{202b}',
            '\u{202c}',
            '\u{202d}',
            '\u{202e}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{2060}',
            '\u{feff}',
            '\u{00ad}',
            '\u{2028}',
            '\u{e0041}',
            '\u{3164}',
        ] {
            let id = format!("deal-{c}1");
            let refused = StreamId::new(id.clone());
            assert_eq!(
                refused,
                Err(InvalidStreamId::InvisibleCharacter {
                    id: id.clone(),
                    character: c
                }),
                "{:x}",
                u32::from(c)
            );
            let message = refused.unwrap_err().to_string();
            let escaped = format!("deal-\\u{{{:x}}}1", u32::from(c));
            assert!(message.contains(&escaped), "{message}");
            assert!(!message.contains(c), "{message}");
            // Stored before the check: it still reads back.
            assert_eq!(StreamId::from_stored(id.clone()).map(String::from), Ok(id));
        }
        let trojan = StreamId::new("deal-\u{202e}1-tnuocca").unwrap_err();
        assert_eq!(
            trojan.to_string(),
            "stream id \"deal-\\u{202e}1-tnuocca\" contains U+202E, an invisible or \
             text-reordering character: a person would read another id; remove it"
        );
        // Control characters stay refused, for new and stored ids, and show escaped too.
        for id in ["a\u{0}b", "a\u{7f}b", "a\u{85}b", "a\tb"] {
            assert!(matches!(
                StreamId::new(id),
                Err(InvalidStreamId::ControlCharacter { .. })
            ));
            assert!(StreamId::from_stored(id).is_err());
        }
        assert_eq!(
            StreamId::new("a\nb").unwrap_err().to_string(),
            "stream id \"a\\nb\" contains a control character"
        );
        // Visible text passes, whatever its script.
        for id in [
            "deal-1",
            "Kunde-Müller",
            "заказ-7",
            "注文-8",
            "عميل-9",
            "a\\b",
            "é",
        ] {
            assert_eq!(StreamId::new(id).map(String::from), Ok(id.to_string()));
        }
        assert!(serde_json::from_str::<StreamId>("\"x\\u202ey\"").is_err());
    }

    #[test]
    fn escaping_leaves_visible_text_alone_and_is_unambiguous() {
        assert!(matches!(
            escape_for_display("deal-1"),
            Cow::Borrowed("deal-1")
        ));
        assert_eq!(escape_for_display("a\\b"), "a\\b");
        assert_eq!(escape_for_display("a\\b\u{200b}"), "a\\\\b\\u{200b}");
        assert_eq!(escape_for_display("x\ny\u{0}"), "x\\ny\\u{0}");
        assert_eq!(escape_for_display("\u{e0041}"), "\\u{e0041}");
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
