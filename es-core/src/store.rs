//! The [`EventStore`] trait, what an append returns, and the input checks every store shares.
//!
//! The checks ([`StoreLimits::check`]) run before anything is written, in every store, so that
//! the in-memory store used by tests refuses exactly what PostgreSQL would, with the same typed
//! error, and PostgreSQL's refusal never reaches a user as a storage error. One of them comes
//! from PostgreSQL: its `jsonb` type rejects the escape `\u0000` in a string, because a NUL
//! character cannot be represented in its `text` type (PostgreSQL documentation, "JSON Types",
//! section 8.14: `json_lex_string` in `src/common/jsonapi.c` fails on it with
//! `JSON_UNICODE_CODE_POINT_ZERO`, "since our TEXT type doesn't" allow it, and
//! `json_errsave_error` in `src/backend/utils/adt/jsonfuncs.c` reports "unsupported Unicode
//! escape sequence", SQLSTATE 22P05). It applies to object keys as well as values. Payloads and
//! metadata are `jsonb` columns, so an event with such a string is
//! [`StoreError::NulCharacter`], naming the event and where in it the character is.

use async_trait::async_trait;
use serde_json::Value;

use crate::commit::{Commit, Committed, IdempotencyKey};
use crate::error::StoreError;
use crate::event::{EventData, FoldEvent, RecordedEvent};
use crate::stream::{ExpectedVersion, GlobalPosition, StreamId, StreamVersion};

/// The longest event type name accepted, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 255;

/// What a successful append returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append (the version of its last new event).
    pub stream_version: StreamVersion,
    /// The global position of the last new event: wait for a projection to reach it to read
    /// your own write.
    pub global_position: GlobalPosition,
}

/// Limits a store enforces on every append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// The largest event accepted: payload plus metadata, as JSON bytes.
    pub max_event_bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1024 * 1024,
        }
    }
}

impl StoreLimits {
    /// Checks an append before anything is written: events present, type names valid, sizes
    /// within the limit, no NUL character in a payload's or metadata's strings.
    pub fn check(&self, stream: &StreamId, events: &[EventData]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend {
                stream: stream.clone(),
            });
        }
        for (index, event) in events.iter().enumerate() {
            if event.event_type.is_empty() {
                return Err(StoreError::InvalidEventType {
                    event_type: event.event_type.clone(),
                    reason: "empty",
                });
            }
            if event.event_type.len() > MAX_EVENT_TYPE_BYTES {
                return Err(StoreError::InvalidEventType {
                    event_type: event.event_type.clone(),
                    reason: "longer than 255 bytes",
                });
            }
            let size = event.encoded_size();
            if size > self.max_event_bytes {
                return Err(StoreError::EventTooLarge {
                    stream: stream.clone(),
                    event_type: event.event_type.clone(),
                    size,
                    limit: self.max_event_bytes,
                });
            }
            let metadata = event.metadata.to_json();
            for (part, value) in [("payload", &event.payload), ("metadata", &metadata)] {
                if let Some(pointer) = nul_pointer(value) {
                    return Err(StoreError::NulCharacter {
                        stream: stream.clone(),
                        index,
                        event_type: event.event_type.clone(),
                        part,
                        pointer,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The JSON pointer (RFC 6901) of the first string in `value` that holds a NUL character, or
/// of the first object member whose key does; None when there is none.
pub(crate) fn nul_pointer(value: &Value) -> Option<String> {
    fn segment(pointer: &str, key: &str) -> String {
        format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"))
    }
    fn walk(value: &Value, pointer: &str) -> Option<String> {
        match value {
            Value::String(s) if s.contains('\0') => Some(pointer.to_string()),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item, &segment(pointer, &i.to_string()))),
            Value::Object(members) => members.iter().find_map(|(key, item)| {
                let at = segment(pointer, key);
                if key.contains('\0') {
                    Some(at)
                } else {
                    walk(item, &at)
                }
            }),
            _ => None,
        }
    }
    walk(value, "")
}

/// An append-only store of event streams with optimistic concurrency.
///
/// Guarantees every implementation gives (and the conformance suite in
/// `es_core::conformance` checks):
/// - an append is all or nothing, and fails with [`StoreError::Conflict`] when `expected` does
///   not hold, writing nothing;
/// - a stream's versions are 1, 2, 3, ... with no gap and no duplicate;
/// - global positions grow with every append;
/// - a [`Commit`] is all or nothing across its streams, its unique values and its idempotency
///   key; a conflict names the stream whose expectation did not hold;
/// - an event id is stored at most once ([`StoreError::DuplicateEventId`]);
/// - a commit whose idempotency key is stored writes nothing and returns the first outcome
///   (`replayed`), even when both race; a key stored for another command is
///   [`StoreError::IdempotencyKeyReused`];
/// - at most one stream holds a unique value in its scope ([`StoreError::UniqueValueTaken`]).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events to a stream atomically, if the stream is at `expected`. The same as a
    /// [`Commit::single`], on the store's fastest path.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError>;

    /// Writes a commit: every stream's events, unique values and the idempotency key in one
    /// transaction, or nothing.
    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError>;

    /// The outcome stored with an idempotency key, if a commit carried it (and it has not
    /// expired); [`StoreError::IdempotencyKeyReused`] if it was stored for another command.
    async fn idempotent_outcome(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Committed>, StoreError>;

    /// The stream that holds a unique value, if one does. For validating a command before it
    /// is sent (the commit's claim is what decides, in its transaction).
    async fn unique_holder(&self, scope: &str, value: &str)
        -> Result<Option<StreamId>, StoreError>;

    /// Every (event type, schema version) pair the log holds, so that a reader can check at
    /// start-up that it can decode all of them.
    async fn stored_event_types(&self) -> Result<Vec<(String, u32)>, StoreError>;

    /// Reads a stream's events with versions above `after` and, if given, up to and including
    /// `up_to`, in version order. A missing stream reads as empty.
    async fn read_stream(
        &self,
        stream: &StreamId,
        after: StreamVersion,
        up_to: Option<StreamVersion>,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads the same events as [`EventStore::read_stream`], with only what folding them into
    /// an aggregate needs ([`FoldEvent`]). Repositories load through it; a store overrides it to
    /// read less than the whole envelope.
    async fn read_stream_for_fold(
        &self,
        stream: &StreamId,
        after: StreamVersion,
        up_to: Option<StreamVersion>,
    ) -> Result<Vec<FoldEvent>, StoreError> {
        let events = self.read_stream(stream, after, up_to).await?;
        Ok(events.into_iter().map(FoldEvent::from).collect())
    }

    /// Reads up to `limit` committed events of the whole log with positions above `after`, in
    /// position order. This is a plain positional read, right for batch jobs over a quiet log;
    /// a process that tails a live log must use a gap-aware reader (in PostgreSQL, positions
    /// may commit out of order).
    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's current version, or None if it has no events.
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<StreamVersion>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_characters_are_found_wherever_they_are() {
        assert_eq!(nul_pointer(&json!({"a": ["x", {"b": 1}], "c": null})), None);
        assert_eq!(nul_pointer(&json!("a\u{0}")), Some(String::new()));
        assert_eq!(
            nul_pointer(&json!({"a": ["x", {"b/~": "y\u{0}"}]})),
            Some("/a/1/b~1~0".into())
        );
        assert_eq!(
            nul_pointer(&json!({"ok": 1, "k\u{0}": 2})),
            Some("/k\u{0}".into())
        );
    }
}
