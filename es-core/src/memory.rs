//! [`InMemoryStore`]: an [`EventStore`] and [`SnapshotStore`] in a mutex, for aggregate unit
//! tests and examples. It passes the same conformance suite as the PostgreSQL store.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::Utc;
use uuid::Uuid;

use crate::commit::{Commit, Committed, CommittedStream, IdempotencyKey, UniqueChange};
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
    event_ids: HashSet<Uuid>,
    /// Idempotency keys: fingerprint and outcome. Kept as long as the store.
    keys: HashMap<String, (Uuid, Vec<CommittedStream>)>,
    /// Unique values: (scope, value) to holder.
    uniques: HashMap<(String, String), StreamId>,
}

impl Log {
    fn version(&self, stream: &StreamId) -> Option<StreamVersion> {
        self.streams
            .get(stream)
            .and_then(|indexes| indexes.last())
            .map(|&i| self.events[i].stream_version)
    }

    /// Checks everything a commit needs against the log, before anything is changed, in the
    /// order the PostgreSQL store meets the same refusals (so both give the same error): each
    /// stream in stream id order (its version, then its event ids), then the claims in
    /// (scope, value) order.
    fn check(&self, appends: &[crate::commit::StreamAppend]) -> Result<(), StoreError> {
        let mut by_stream: Vec<&crate::commit::StreamAppend> = appends.iter().collect();
        by_stream.sort_by(|a, b| a.stream.cmp(&b.stream));
        for append in &by_stream {
            let actual = self.version(&append.stream);
            if !append.expected.is_satisfied_by(actual) {
                return Err(StoreError::Conflict {
                    stream: append.stream.clone(),
                    expected: append.expected,
                    actual,
                });
            }
            if let Some(event) = append
                .events
                .iter()
                .find(|e| self.event_ids.contains(&e.event_id))
            {
                return Err(StoreError::DuplicateEventId {
                    event_id: event.event_id,
                });
            }
        }
        let mut claims: Vec<(&str, &str, &StreamId)> = appends
            .iter()
            .flat_map(|append| {
                append
                    .uniques
                    .iter()
                    .filter_map(move |change| match change {
                        UniqueChange::Claim { scope, value } => {
                            Some((scope.as_str(), value.as_str(), &append.stream))
                        }
                        UniqueChange::Release { .. } => None,
                    })
            })
            .collect();
        claims.sort();
        for (scope, value, claimer) in claims {
            let Some(holder) = self.uniques.get(&(scope.to_string(), value.to_string())) else {
                continue;
            };
            // A value this commit releases from its holder is free for it.
            let released = appends.iter().any(|other| {
                &other.stream == holder
                    && other.uniques.contains(&UniqueChange::release(scope, value))
            });
            if holder != claimer && !released {
                return Err(StoreError::UniqueValueTaken {
                    scope: scope.to_string(),
                    value: value.to_string(),
                    holder: holder.clone(),
                });
            }
        }
        Ok(())
    }

    /// Appends one stream's events (already checked).
    fn push(&mut self, stream: &StreamId, events: Vec<EventData>) -> CommittedStream {
        let mut version = self.version(stream).unwrap_or(StreamVersion::INITIAL);
        let mut position = GlobalPosition(self.events.len() as i64);
        let recorded_at = Utc::now();
        let count = events.len() as u64;
        let mut indexes = Vec::with_capacity(events.len());
        for event in events {
            version = version.next();
            position = GlobalPosition(position.0 + 1);
            indexes.push(self.events.len());
            self.event_ids.insert(event.event_id);
            self.events.push(RecordedEvent {
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
        self.streams
            .entry(stream.clone())
            .or_default()
            .extend(indexes);
        CommittedStream {
            stream: stream.clone(),
            events: count,
            stream_version: version,
            global_position: position,
        }
    }

    fn replay(&self, key: &IdempotencyKey) -> Result<Option<Committed>, StoreError> {
        match self.keys.get(key.key()) {
            None => Ok(None),
            Some((fingerprint, _)) if *fingerprint != key.fingerprint() => {
                Err(StoreError::IdempotencyKeyReused {
                    key: key.key().to_string(),
                })
            }
            Some((_, streams)) => Ok(Some(Committed {
                streams: streams.clone(),
                replayed: true,
            })),
        }
    }
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
        let append = crate::commit::StreamAppend::new(stream.clone(), expected, events);
        log.check(std::slice::from_ref(&append))?;
        Ok(log.push(stream, append.events).result())
    }

    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        commit.check(&self.limits)?;
        let mut log = self.lock();
        let (appends, key) = commit.into_parts();
        if let Some(key) = &key {
            if let Some(first) = log.replay(key)? {
                return Ok(first);
            }
        }
        log.check(&appends)?;
        // Positions in stream id order, as the PostgreSQL store writes them; outcomes in the
        // order of the parts.
        let mut order: Vec<usize> = (0..appends.len()).collect();
        order.sort_by(|&a, &b| appends[a].stream.cmp(&appends[b].stream));
        let mut slots: Vec<Option<crate::commit::StreamAppend>> =
            appends.into_iter().map(Some).collect();
        let mut outcomes: Vec<Option<CommittedStream>> = vec![None; slots.len()];
        for index in order {
            let Some(append) = slots[index].take() else {
                continue;
            };
            for change in &append.uniques {
                if let UniqueChange::Release { scope, value } = change {
                    let key = (scope.clone(), value.clone());
                    if log.uniques.get(&key) == Some(&append.stream) {
                        log.uniques.remove(&key);
                    }
                }
            }
            for change in &append.uniques {
                if let UniqueChange::Claim { scope, value } = change {
                    log.uniques
                        .insert((scope.clone(), value.clone()), append.stream.clone());
                }
            }
            outcomes[index] = Some(log.push(&append.stream, append.events));
        }
        let streams: Vec<CommittedStream> = outcomes.into_iter().flatten().collect();
        if let Some(key) = key {
            log.keys
                .insert(key.key().to_string(), (key.fingerprint(), streams.clone()));
        }
        Ok(Committed {
            streams,
            replayed: false,
        })
    }

    async fn idempotent_outcome(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Committed>, StoreError> {
        self.lock().replay(key)
    }

    async fn unique_holder(
        &self,
        scope: &str,
        value: &str,
    ) -> Result<Option<StreamId>, StoreError> {
        Ok(self
            .lock()
            .uniques
            .get(&(scope.to_string(), value.to_string()))
            .cloned())
    }

    async fn stored_event_types(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let log = self.lock();
        let pairs: BTreeSet<(String, u32)> = log
            .events
            .iter()
            .map(|e| (e.event_type.clone(), e.schema_version))
            .collect();
        Ok(pairs.into_iter().collect())
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
        Ok(self.lock().version(stream))
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
        snapshot.check()?;
        let mut log = self.lock();
        let key = (snapshot.stream_id.clone(), snapshot.aggregate_type.clone());
        // As PostgreSQL's store (save_snapshot.sql): a newer state version wins, then a higher
        // stream version; older code's snapshot never replaces a newer one.
        let newer = log.snapshots.get(&key).is_none_or(|old| {
            (old.state_version, old.stream_version)
                < (snapshot.state_version, snapshot.stream_version)
        });
        if newer {
            log.snapshots.insert(key, snapshot);
        }
        Ok(())
    }
}
