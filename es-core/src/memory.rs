//! [`InMemoryStore`]: an [`EventStore`] and [`SnapshotStore`] in a mutex, for aggregate unit
//! tests and examples. It passes the same conformance suite as the PostgreSQL store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::Utc;

use crate::error::StoreError;
use crate::event::{EventData, RecordedEvent};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{AppendResult, EventStore, StoreLimits};
use crate::stream::{ExpectedVersion, GlobalPosition, StreamId, StreamVersion};

#[derive(Default)]
struct Log {
    events: Vec<RecordedEvent>,
    /// Indexes into `events`, per stream, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    snapshots: HashMap<(StreamId, String), Snapshot>,
}

/// An event store in memory. Cloning shares the same log.
#[derive(Clone, Default)]
pub struct InMemoryStore {
    log: Arc<Mutex<Log>>,
    limits: StoreLimits,
}

impl InMemoryStore {
    /// An empty store with default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with these limits.
    pub fn with_limits(limits: StoreLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A panic while holding the lock cannot leave the log half-written (appends push only
        // after every check), so a poisoned lock is still consistent.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl EventStore for InMemoryStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        self.limits.check(stream, &events)?;
        let mut log = self.lock();
        let actual = log
            .streams
            .get(stream)
            .and_then(|indexes| indexes.last())
            .map(|&i| log.events[i].stream_version);
        if !expected.is_satisfied_by(actual) {
            return Err(StoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual,
            });
        }
        let mut version = actual.unwrap_or(StreamVersion::INITIAL);
        let mut position = GlobalPosition(log.events.len() as i64);
        let recorded_at = Utc::now();
        let mut indexes = Vec::with_capacity(events.len());
        for event in events {
            version = version.next();
            position = GlobalPosition(position.0 + 1);
            indexes.push(log.events.len());
            log.events.push(RecordedEvent {
                event_id: event.event_id,
                stream_id: stream.clone(),
                stream_version: version,
                global_position: position,
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload.into(),
                metadata: event.metadata,
                recorded_at,
            });
        }
        log.streams
            .entry(stream.clone())
            .or_default()
            .extend(indexes);
        Ok(AppendResult {
            stream_version: version,
            global_position: position,
        })
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after: StreamVersion,
        up_to: Option<StreamVersion>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.lock();
        let Some(indexes) = log.streams.get(stream) else {
            return Ok(Vec::new());
        };
        Ok(indexes
            .iter()
            .map(|&i| &log.events[i])
            .filter(|e| e.stream_version > after && up_to.is_none_or(|max| e.stream_version <= max))
            .cloned()
            .collect())
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.lock();
        // Positions are 1-based indexes + 1, with no holes.
        let start = usize::try_from(after.0.max(0)).unwrap_or(usize::MAX);
        Ok(log.events.iter().skip(start).take(limit).cloned().collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<StreamVersion>, StoreError> {
        let log = self.lock();
        Ok(log
            .streams
            .get(stream)
            .and_then(|indexes| indexes.last())
            .map(|&i| log.events[i].stream_version))
    }
}

#[async_trait]
impl SnapshotStore for InMemoryStore {
    async fn load_snapshot(
        &self,
        stream: &StreamId,
        aggregate_type: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        let log = self.lock();
        Ok(log
            .snapshots
            .get(&(stream.clone(), aggregate_type.to_string()))
            .cloned())
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut log = self.lock();
        let key = (snapshot.stream_id.clone(), snapshot.aggregate_type.clone());
        let newer = log.snapshots.get(&key).is_none_or(|old| {
            old.stream_version < snapshot.stream_version
                || old.state_version != snapshot.state_version
        });
        if newer {
            log.snapshots.insert(key, snapshot);
        }
        Ok(())
    }
}
