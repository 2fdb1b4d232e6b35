//! Snapshots: an aggregate's state stored at a stream version, so that loading a long stream
//! reads only the events after it.
//!
//! A snapshot carries the aggregate's [`STATE_VERSION`](crate::Aggregate::STATE_VERSION); one of
//! another version is ignored (the stream is replayed). Only the newest is kept: a newer state
//! version wins, then a higher stream version, so the next snapshot of newer code replaces an
//! older code's, while older code (during a rolling deployment or after a rollback) never
//! replaces a newer code's snapshot and replays such streams until it is upgraded.
//! Snapshot writes under the policy are best effort: a failed write is logged and never fails a
//! command. [`Repository::snapshot_now`](crate::Repository::snapshot_now) snapshots one stream on
//! demand and returns a failed write as an error.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::StoreError;
use crate::stream::{StreamId, StreamVersion};

/// An aggregate's state at a stream version.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The stream.
    pub stream_id: StreamId,
    /// The aggregate type ([`Aggregate::TYPE`](crate::Aggregate::TYPE)).
    pub aggregate_type: String,
    /// The version of the last event folded into `state`.
    pub stream_version: StreamVersion,
    /// The aggregate's state schema version when it was taken.
    pub state_version: u32,
    /// The state as JSON.
    pub state: Value,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

impl Snapshot {
    /// Refuses a state that no store can keep: a NUL character in a string or a key
    /// ([`StoreError::NulInSnapshot`]). Every store calls it before writing.
    pub fn check(&self) -> Result<(), StoreError> {
        match crate::store::nul_pointer(&self.state) {
            Some(pointer) => Err(StoreError::NulInSnapshot {
                stream: self.stream_id.clone(),
                aggregate_type: self.aggregate_type.clone(),
                pointer,
            }),
            None => Ok(()),
        }
    }
}

/// Where snapshots live. Only the latest snapshot of a stream is kept.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The latest snapshot of a stream for an aggregate type, if any.
    async fn load_snapshot(
        &self,
        stream: &StreamId,
        aggregate_type: &str,
    ) -> Result<Option<Snapshot>, StoreError>;

    /// The latest snapshot at or below `max_version` (for loading as of a version). Stores that
    /// keep only the latest may return it only when it is old enough.
    async fn load_snapshot_at(
        &self,
        stream: &StreamId,
        aggregate_type: &str,
        max_version: StreamVersion,
    ) -> Result<Option<Snapshot>, StoreError> {
        Ok(self
            .load_snapshot(stream, aggregate_type)
            .await?
            .filter(|s| s.stream_version <= max_version))
    }

    /// Stores a snapshot, replacing the stream's one of a lower state version, or of the same
    /// state version at a lower stream version (see the module docs); otherwise keeps the old.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError>;
}

/// A source of an aggregate's state at some version, other than the snapshot table: most
/// often a projection's read table whose row for the stream says what the aggregate looked like
/// and the stream version it reflects (the read model as snapshot, the store as truth). The
/// repository starts from that state and folds the events after the version, so a command on a
/// long stream costs one indexed read plus the few events the row has not caught up with, and
/// a stale row costs nothing but those events. The same load is the strongly consistent read:
/// the row brought to the stream's head.
///
/// The state must be exactly the fold of the stream's events up to the version given, or the
/// repository would decide on a wrong state; a source that cannot say returns `None`.
#[async_trait]
pub trait StateSource<A>: Send + Sync + 'static {
    /// The state of `stream` and the stream version it reflects, if the source has one.
    async fn load_state(&self, stream: &StreamId)
        -> Result<Option<(A, StreamVersion)>, StoreError>;
}

/// When the repository takes a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotPolicy {
    /// Never.
    #[default]
    Never,
    /// Whenever an append reaches or crosses a multiple of N events.
    EveryNEvents(u64),
}

impl SnapshotPolicy {
    /// Whether an append that moved a stream from `before` to `after` calls for a snapshot.
    pub fn is_due(self, before: StreamVersion, after: StreamVersion) -> bool {
        match self {
            SnapshotPolicy::Never => false,
            SnapshotPolicy::EveryNEvents(0) => false,
            SnapshotPolicy::EveryNEvents(n) => after.0 / n > before.0 / n,
        }
    }
}

/// How a snapshot write runs relative to the command that caused it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotWrite {
    /// In a spawned task: the command returns at once (the default).
    #[default]
    Background,
    /// Awaited before the command returns, errors still only logged (deterministic; for tests
    /// and batch tools).
    Inline,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_fires_when_crossing_a_boundary() {
        let p = SnapshotPolicy::EveryNEvents(100);
        let v = StreamVersion;
        assert!(!p.is_due(v(0), v(99)));
        assert!(p.is_due(v(99), v(100)));
        assert!(p.is_due(v(95), v(130)));
        assert!(!p.is_due(v(100), v(199)));
        assert!(p.is_due(v(0), v(250)));
        assert!(!SnapshotPolicy::Never.is_due(v(0), v(1000)));
    }
}
