//! The [`EventStore`] trait, what an append returns, and the input checks every store shares.

use async_trait::async_trait;

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
    /// within the limit.
    pub fn check(&self, stream: &StreamId, events: &[EventData]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend {
                stream: stream.clone(),
            });
        }
        for event in events {
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
        }
        Ok(())
    }
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
