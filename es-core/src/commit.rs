//! [`Commit`]: one atomic write to the store. Appends to one or more streams, each with its own
//! expected version, the unique values those appends claim or release, and an optional
//! idempotency key: all written in one transaction, or none of it.
//!
//! ```
//! use es_core::{Commit, EventData, ExpectedVersion, StreamAppend, StreamId, StreamVersion};
//! use serde_json::json;
//!
//! let from = StreamId::new("account-1").unwrap();
//! let to = StreamId::new("account-2").unwrap();
//! let transfer = Commit::new()
//!     .with(StreamAppend::new(
//!         from,
//!         ExpectedVersion::Exact(StreamVersion(3)),
//!         vec![EventData::raw("Withdrawn", 1, json!({ "amount": 10 }))],
//!     ))
//!     .with(StreamAppend::new(
//!         to,
//!         ExpectedVersion::Exact(StreamVersion(7)),
//!         vec![EventData::raw("Deposited", 1, json!({ "amount": 10 }))],
//!     ));
//! assert_eq!(transfer.streams().len(), 2);
//! ```

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::EventData;
use crate::store::{AppendResult, StoreLimits};
use crate::stream::{ExpectedVersion, GlobalPosition, StreamId, StreamVersion};

/// The longest idempotency key, unique scope or unique value accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// One stream's part of a [`Commit`]: its events, the version it must be at, and the unique
/// values its events claim or release.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamAppend {
    /// The stream.
    pub stream: StreamId,
    /// The version the stream must be at for the commit to be written.
    pub expected: ExpectedVersion,
    /// The new events, in order (at least one).
    pub events: Vec<EventData>,
    /// Unique values claimed for this stream or released by it, in the same transaction.
    pub uniques: Vec<UniqueChange>,
}

impl StreamAppend {
    /// Events for one stream, expected at `expected`.
    pub fn new(stream: StreamId, expected: ExpectedVersion, events: Vec<EventData>) -> Self {
        Self {
            stream,
            expected,
            events,
            uniques: Vec::new(),
        }
    }

    /// Also claims or releases these unique values.
    pub fn with_uniques(mut self, uniques: impl IntoIterator<Item = UniqueChange>) -> Self {
        self.uniques.extend(uniques);
        self
    }
}

/// A value that at most one stream may hold at a time within its scope: an e-mail address
/// (scope `user-email`), a licence plate. Claimed by an event of the holder's stream and released
/// by a later one; see [`Aggregate::unique_changes`](crate::Aggregate::unique_changes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UniqueChange {
    /// The stream takes the value. Claiming a value the same stream already holds is a no-op;
    /// a value another stream holds fails the commit with [`StoreError::UniqueValueTaken`].
    Claim {
        /// The namespace of the value, e.g. `user-email`.
        scope: String,
        /// The value.
        value: String,
    },
    /// The stream gives the value up. Releasing a value the stream does not hold is a no-op.
    Release {
        /// The namespace of the value.
        scope: String,
        /// The value.
        value: String,
    },
}

impl UniqueChange {
    /// Claims `value` in `scope`.
    pub fn claim(scope: impl Into<String>, value: impl Into<String>) -> Self {
        UniqueChange::Claim {
            scope: scope.into(),
            value: value.into(),
        }
    }

    /// Releases `value` in `scope`.
    pub fn release(scope: impl Into<String>, value: impl Into<String>) -> Self {
        UniqueChange::Release {
            scope: scope.into(),
            value: value.into(),
        }
    }

    /// The scope and value.
    pub fn key(&self) -> (&str, &str) {
        match self {
            UniqueChange::Claim { scope, value } | UniqueChange::Release { scope, value } => {
                (scope, value)
            }
        }
    }
}

/// A caller-chosen key that makes a command safe to repeat (a client retrying after a
/// timeout, a message the broker delivers twice): the store keeps the key with the outcome of
/// the first commit that carried it, in that commit's transaction, and a later commit with the
/// same key writes nothing and returns that outcome.
///
/// The fingerprint says which command the key was first used for: the same key with another
/// fingerprint is [`StoreError::IdempotencyKeyReused`], not a silent replay of something else.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    key: String,
    fingerprint: Uuid,
}

impl IdempotencyKey {
    /// A key for the command `request` (any serialisable description of it: the command
    /// itself, usually). Keys are 1 to [`MAX_KEY_BYTES`] bytes with no control characters.
    pub fn for_request<R: Serialize + ?Sized>(
        key: impl Into<String>,
        request: &R,
    ) -> Result<Self, StoreError> {
        let key = key.into();
        check_text("idempotency key", &key)?;
        let value = serde_json::to_value(request).map_err(|e| {
            StoreError::invalid_commit(format!("cannot serialise the request: {e}"))
        })?;
        let mut canonical = String::new();
        write_canonical(&value, &mut canonical);
        let fingerprint = Uuid::new_v5(&FINGERPRINTS, canonical.as_bytes());
        Ok(Self { key, fingerprint })
    }

    /// A key with a fingerprint computed elsewhere (as stored, read back).
    pub fn from_parts(key: impl Into<String>, fingerprint: Uuid) -> Result<Self, StoreError> {
        let key = key.into();
        check_text("idempotency key", &key)?;
        Ok(Self { key, fingerprint })
    }

    /// The same key, bound also to `scope` (the repository binds the aggregate type and the
    /// streams, so a key reused on another stream is caught).
    pub fn bound_to(&self, scope: &str) -> Self {
        let mut bytes = self.fingerprint.as_bytes().to_vec();
        bytes.extend_from_slice(scope.as_bytes());
        Self {
            key: self.key.clone(),
            fingerprint: Uuid::new_v5(&FINGERPRINTS, &bytes),
        }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fingerprint of the command it belongs to.
    pub fn fingerprint(&self) -> Uuid {
        self.fingerprint
    }
}

/// JSON with every object's keys sorted, so that two equal requests give the same bytes
/// whatever the order of a map inside them, and whether or not serde_json keeps insertion
/// order (its `preserve_order` feature, which any crate in a build may turn on).
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The namespace of fingerprints (a fixed, random UUID: changing it would make every stored
/// key look reused).
const FINGERPRINTS: Uuid = Uuid::from_u128(0x5c1e_27a4_8f0b_4d3e_9a61_2b7d_0c94_e8f3);

/// One atomic write: see the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Commit {
    streams: Vec<StreamAppend>,
    idempotency: Option<IdempotencyKey>,
}

impl Commit {
    /// An empty commit; add streams with [`Commit::with`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A commit of one stream's events.
    pub fn single(stream: StreamId, expected: ExpectedVersion, events: Vec<EventData>) -> Self {
        Self::new().with(StreamAppend::new(stream, expected, events))
    }

    /// Adds one stream's part.
    pub fn with(mut self, append: StreamAppend) -> Self {
        self.streams.push(append);
        self
    }

    /// Makes the commit safe to repeat under `key`.
    pub fn idempotent(mut self, key: IdempotencyKey) -> Self {
        self.idempotency = Some(key);
        self
    }

    /// The streams' parts, in the order given.
    pub fn streams(&self) -> &[StreamAppend] {
        &self.streams
    }

    /// The idempotency key, if any.
    pub fn idempotency(&self) -> Option<&IdempotencyKey> {
        self.idempotency.as_ref()
    }

    /// Takes the commit apart.
    pub fn into_parts(self) -> (Vec<StreamAppend>, Option<IdempotencyKey>) {
        (self.streams, self.idempotency)
    }

    /// Checks the commit before anything is written: at least one stream, no stream twice,
    /// every stream's events valid ([`StoreLimits::check`]), no event id twice, valid unique
    /// values, and no value claimed by two of its streams.
    pub fn check(&self, limits: &StoreLimits) -> Result<(), StoreError> {
        if self.streams.is_empty() {
            return Err(StoreError::invalid_commit("it appends to no stream"));
        }
        let mut streams = HashSet::new();
        let mut ids = HashSet::new();
        let mut claimed = HashSet::new();
        for append in &self.streams {
            if !streams.insert(&append.stream) {
                return Err(StoreError::invalid_commit(format!(
                    "stream {} appears twice (put all of a stream's events in one part)",
                    append.stream
                )));
            }
            limits.check(&append.stream, &append.events)?;
            for event in &append.events {
                if !ids.insert(event.event_id) {
                    return Err(StoreError::DuplicateEventId {
                        event_id: event.event_id,
                    });
                }
            }
            for change in &append.uniques {
                let (scope, value) = change.key();
                check_text("unique scope", scope)?;
                check_text("unique value", value)?;
                if matches!(change, UniqueChange::Claim { .. }) && !claimed.insert((scope, value)) {
                    return Err(StoreError::invalid_commit(format!(
                        "{scope} {value:?} is claimed twice in one commit"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn check_text(what: &str, text: &str) -> Result<(), StoreError> {
    if text.is_empty() {
        return Err(StoreError::invalid_commit(format!("the {what} is empty")));
    }
    if text.len() > MAX_KEY_BYTES {
        return Err(StoreError::invalid_commit(format!(
            "the {what} is {} bytes, over the limit of {MAX_KEY_BYTES}",
            text.len()
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(StoreError::invalid_commit(format!(
            "the {what} {text:?} contains a control character"
        )));
    }
    Ok(())
}

/// What one stream of a commit became.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedStream {
    /// The stream.
    pub stream: StreamId,
    /// How many events the commit appended to it.
    pub events: u64,
    /// The stream's version after the commit.
    pub stream_version: StreamVersion,
    /// The global position of the stream's last new event.
    pub global_position: GlobalPosition,
}

impl CommittedStream {
    /// The version the stream was at before the commit.
    pub fn previous_version(&self) -> StreamVersion {
        StreamVersion(self.stream_version.0.saturating_sub(self.events))
    }

    /// As a single append's result.
    pub fn result(&self) -> AppendResult {
        AppendResult {
            stream_version: self.stream_version,
            global_position: self.global_position,
        }
    }
}

/// What a successful commit returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Each stream's outcome, in the order of the commit's parts.
    pub streams: Vec<CommittedStream>,
    /// True when the commit wrote nothing because its idempotency key was already stored: the
    /// outcome is that of the first commit with the key.
    pub replayed: bool,
}

impl Committed {
    /// The highest global position written: wait for a projection to reach it to read the
    /// whole commit back.
    pub fn global_position(&self) -> GlobalPosition {
        self.streams
            .iter()
            .map(|s| s.global_position)
            .max()
            .unwrap_or(GlobalPosition::START)
    }

    /// The outcome of one stream, if the commit wrote to it.
    pub fn stream(&self, stream: &StreamId) -> Option<&CommittedStream> {
        self.streams.iter().find(|s| &s.stream == stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stream(name: &str) -> StreamId {
        StreamId::new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    fn one() -> Vec<EventData> {
        vec![EventData::raw("Happened", 1, json!({}))]
    }

    #[test]
    fn bad_commits_are_refused_before_anything_is_written() {
        let limits = StoreLimits::default();
        let invalid = |commit: Commit| match commit.check(&limits) {
            Err(StoreError::InvalidCommit { reason }) => reason,
            other => panic!("expected InvalidCommit, got {other:?}"),
        };
        assert!(invalid(Commit::new()).contains("no stream"));
        let twice = Commit::single(stream("a"), ExpectedVersion::Any, one())
            .with(StreamAppend::new(stream("a"), ExpectedVersion::Any, one()));
        assert!(invalid(twice).contains("twice"));
        let claim = UniqueChange::claim("email", "ann@example.com");
        let both = Commit::new()
            .with(
                StreamAppend::new(stream("a"), ExpectedVersion::Any, one())
                    .with_uniques([claim.clone()]),
            )
            .with(
                StreamAppend::new(stream("b"), ExpectedVersion::Any, one()).with_uniques([claim]),
            );
        assert!(invalid(both).contains("claimed twice"));
        let empty_value = Commit::new().with(
            StreamAppend::new(stream("a"), ExpectedVersion::Any, one())
                .with_uniques([UniqueChange::claim("email", "")]),
        );
        assert!(invalid(empty_value).contains("empty"));

        let events = one();
        let same_id = Commit::single(stream("a"), ExpectedVersion::Any, events.clone())
            .with(StreamAppend::new(stream("b"), ExpectedVersion::Any, events));
        assert!(matches!(
            same_id.check(&limits),
            Err(StoreError::DuplicateEventId { .. })
        ));
        let no_events = Commit::single(stream("a"), ExpectedVersion::Any, Vec::new());
        assert!(matches!(
            no_events.check(&limits),
            Err(StoreError::EmptyAppend { .. })
        ));
    }

    #[test]
    fn fingerprints_follow_the_request_not_its_map_order() {
        use std::collections::HashMap;
        let a: HashMap<String, i32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let b: HashMap<String, i32> = (0..50).rev().map(|i| (format!("k{i}"), i)).collect();
        let key = |r: &HashMap<String, i32>| {
            IdempotencyKey::for_request("k-1", r).map(|k| k.fingerprint())
        };
        assert_eq!(key(&a).ok(), key(&b).ok());
        let other =
            IdempotencyKey::for_request("k-1", &json!({ "other": 1 })).map(|k| k.fingerprint());
        assert_ne!(key(&a).ok(), other.ok());
        let bound = |scope| {
            IdempotencyKey::for_request("k-1", &1)
                .map(|k| k.bound_to(scope).fingerprint())
                .ok()
        };
        assert_ne!(bound("account/a"), bound("account/b"));
        assert!(IdempotencyKey::for_request("", &1).is_err());
        assert!(IdempotencyKey::for_request("a\nb", &1).is_err());
    }
}
