//! Repository behaviour on the in-memory store: conflicts are retried under the policy (and
//! reported as `TooManyConflicts` when it runs out), a domain error writes nothing, and a
//! command that causes no events writes nothing, and `snapshot_now` stores the current state.
//!
//! Contention is made deterministic with a gate in front of the store: the first `n` stream
//! reads wait for each other, so `n` commands are all decided on the same version before any of
//! them appends. Exactly one of that first round can win; the others conflict.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use es_core::{
    Aggregate, AppendResult, Commit, Committed, DomainEvent, EventData, EventStore,
    ExpectedVersion, GlobalPosition, IdempotencyKey, InMemoryStore, RecordedEvent, Repository,
    RepositoryError, RetryPolicy, StoreError, StreamId, StreamVersion,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    value: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Incremented { by: u64 },
}

impl DomainEvent for CounterEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Incremented", 1)];
}

#[derive(Clone, Debug)]
enum CounterCommand {
    Increment(u64),
    /// Accepted, but changes nothing: no events.
    Nothing,
    /// Refused above this value.
    IncrementUpTo {
        by: u64,
        limit: u64,
    },
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the counter would pass {limit}")]
struct OverLimit {
    limit: u64,
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = OverLimit;

    fn handle(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, OverLimit> {
        match command {
            CounterCommand::Increment(by) => Ok(vec![CounterEvent::Incremented { by }]),
            CounterCommand::Nothing => Ok(Vec::new()),
            CounterCommand::IncrementUpTo { by, limit } if self.value + by > limit => {
                Err(OverLimit { limit })
            }
            CounterCommand::IncrementUpTo { by, .. } => Ok(vec![CounterEvent::Incremented { by }]),
        }
    }

    fn apply(&mut self, CounterEvent::Incremented { by }: &CounterEvent) {
        self.value += by;
    }
}

/// An in-memory store whose first `gated` stream reads wait for each other before returning.
struct GatedStore {
    inner: InMemoryStore,
    gate: Barrier,
    gated: usize,
    reads: AtomicUsize,
    appends: AtomicUsize,
}

impl GatedStore {
    fn new(inner: InMemoryStore, gated: usize) -> Self {
        Self {
            inner,
            gate: Barrier::new(gated),
            gated,
            reads: AtomicUsize::new(0),
            appends: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl EventStore for GatedStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.inner.append(stream, expected, events).await
    }

    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(commit).await
    }

    async fn idempotent_outcome(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Committed>, StoreError> {
        self.inner.idempotent_outcome(key).await
    }

    async fn unique_holder(
        &self,
        scope: &str,
        value: &str,
    ) -> Result<Option<StreamId>, StoreError> {
        self.inner.unique_holder(scope, value).await
    }

    async fn stored_event_types(&self) -> Result<Vec<(String, u32)>, StoreError> {
        self.inner.stored_event_types().await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after: StreamVersion,
        up_to: Option<StreamVersion>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_stream(stream, after, up_to).await?;
        if self.reads.fetch_add(1, Ordering::SeqCst) < self.gated {
            self.gate.wait().await;
        }
        Ok(events)
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<StreamVersion>, StoreError> {
        self.inner.stream_version(stream).await
    }
}

fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap()
}

/// Runs `tasks` concurrent `Increment(1)` commands on one stream and returns their results.
async fn race(
    repository: Arc<Repository<Counter>>,
    id: &StreamId,
    tasks: usize,
) -> Vec<Result<es_core::CommandOutcome<CounterEvent>, RepositoryError<OverLimit>>> {
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (repository, id) = (repository.clone(), id.clone());
            tokio::spawn(async move { repository.execute(&id, CounterCommand::Increment(1)).await })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks);
    for handle in handles {
        results.push(handle.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_racing_increments_all_succeed_with_retries() {
    let memory = InMemoryStore::new();
    let store = Arc::new(GatedStore::new(memory.clone(), 16));
    let patient = RetryPolicy {
        max_attempts: 1000,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
    };
    let repository = Arc::new(Repository::<Counter>::from_arc(store.clone()).with_retry(patient));
    let id = stream("counter-race");

    let results = race(repository.clone(), &id, 16).await;

    let outcomes: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    // Every version from 1 to 16 was written by exactly one command.
    let mut versions: Vec<u64> = outcomes.iter().map(|o| o.stream_version.0).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=16).collect::<Vec<_>>());
    // All 16 decided on version 0 in the first round: one won it, fifteen had to retry.
    assert_eq!(outcomes.iter().filter(|o| o.attempts == 1).count(), 1);
    let attempts: u32 = outcomes.iter().map(|o| o.attempts).sum();
    assert!(attempts >= 16 + 15, "attempts: {attempts}");
    assert_eq!(store.appends.load(Ordering::SeqCst), attempts as usize);

    let loaded = repository.load(&id).await.unwrap();
    assert_eq!(loaded.state.value, 16);
    assert_eq!(loaded.version, StreamVersion(16));
    assert_eq!(
        memory
            .read_all(GlobalPosition::START, 100)
            .await
            .unwrap()
            .len(),
        16
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_retries_contention_is_too_many_conflicts_and_losers_write_nothing() {
    let memory = InMemoryStore::new();
    let store = Arc::new(GatedStore::new(memory.clone(), 16));
    let repository = Arc::new(
        Repository::<Counter>::from_arc(store.clone()).with_retry(RetryPolicy::no_retry()),
    );
    let id = stream("counter-no-retry");

    let results = race(repository.clone(), &id, 16).await;

    let mut wins = 0;
    for result in results {
        match result {
            Ok(outcome) => {
                assert_eq!(outcome.attempts, 1);
                assert_eq!(outcome.stream_version, StreamVersion(1));
                wins += 1;
            }
            Err(RepositoryError::TooManyConflicts { stream, attempts }) => {
                assert_eq!(stream, id);
                assert_eq!(attempts, 1);
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(wins, 1);
    // Each command tried exactly once.
    assert_eq!(store.appends.load(Ordering::SeqCst), 16);
    assert_eq!(repository.load(&id).await.unwrap().state.value, 1);
    assert_eq!(
        memory
            .read_all(GlobalPosition::START, 100)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_domain_error_writes_nothing() {
    let memory = InMemoryStore::new();
    let repository = Repository::<Counter>::new(memory.clone());
    let id = stream("counter-limit");

    // On a new stream: refused, and the stream still does not exist.
    let refused = repository
        .execute(&id, CounterCommand::IncrementUpTo { by: 5, limit: 3 })
        .await;
    assert!(matches!(
        refused,
        Err(RepositoryError::Domain(OverLimit { limit: 3 }))
    ));
    assert_eq!(memory.stream_version(&id).await.unwrap(), None);

    // On an existing stream: refused, and the stream is as it was.
    repository
        .execute(&id, CounterCommand::IncrementUpTo { by: 2, limit: 3 })
        .await
        .unwrap();
    let refused = repository
        .execute(&id, CounterCommand::IncrementUpTo { by: 2, limit: 3 })
        .await;
    assert!(matches!(refused, Err(RepositoryError::Domain(_))));
    assert_eq!(
        memory.stream_version(&id).await.unwrap(),
        Some(StreamVersion(1))
    );
    assert_eq!(
        memory
            .read_all(GlobalPosition::START, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(repository.load(&id).await.unwrap().state.value, 2);
}

#[tokio::test]
async fn a_command_without_events_writes_nothing() {
    let memory = InMemoryStore::new();
    let repository = Repository::<Counter>::new(memory.clone());
    let id = stream("counter-nothing");

    let outcome = repository
        .execute(&id, CounterCommand::Nothing)
        .await
        .unwrap();
    assert_eq!(outcome.stream_version, StreamVersion::INITIAL);
    assert_eq!(outcome.global_position, None);
    assert!(outcome.events.is_empty());
    assert_eq!(outcome.attempts, 1);
    assert_eq!(memory.stream_version(&id).await.unwrap(), None);

    repository
        .execute(&id, CounterCommand::Increment(4))
        .await
        .unwrap();
    let outcome = repository
        .execute(&id, CounterCommand::Nothing)
        .await
        .unwrap();
    assert_eq!(outcome.stream_version, StreamVersion(1));
    assert_eq!(outcome.global_position, None);
    assert_eq!(
        memory
            .read_all(GlobalPosition::START, 100)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn the_cache_skips_reads_and_a_stale_entry_is_caught_by_the_append() {
    let shared = InMemoryStore::new();
    // No gate: the wrapper only counts the stream reads the cache saves.
    let counting = Arc::new(GatedStore::new(shared.clone(), 0));
    let cached = Repository::<Counter>::from_arc(counting.clone()).with_cache(100);
    let other = Repository::<Counter>::new(shared.clone());
    let id = StreamId::new("cached").unwrap();

    for _ in 0..5 {
        cached
            .execute(&id, CounterCommand::Increment(1))
            .await
            .unwrap();
    }
    assert_eq!(
        counting.reads.load(Ordering::SeqCst),
        1,
        "only the first command reads the stream"
    );

    // Another writer moves the stream on: the cached entry (value 5, version 5) is now stale.
    for _ in 0..5 {
        other
            .execute(&id, CounterCommand::Increment(1))
            .await
            .unwrap();
    }
    // Decided on the cache (5 + 1 <= 10) the command would pass; the append conflicts, the
    // entry is dropped, and on the fresh state (10) it is refused.
    let refused = cached
        .execute(&id, CounterCommand::IncrementUpTo { by: 1, limit: 10 })
        .await;
    assert!(matches!(
        refused,
        Err(RepositoryError::Domain(OverLimit { limit: 10 }))
    ));
    assert_eq!(
        other.load(&id).await.unwrap().state.value,
        10,
        "nothing was written"
    );

    let outcome = cached
        .execute(&id, CounterCommand::Increment(2))
        .await
        .unwrap();
    assert_eq!(outcome.stream_version, StreamVersion(11));
    assert_eq!(
        outcome.attempts, 1,
        "a stale cache entry is not counted as contention"
    );
    assert_eq!(other.load(&id).await.unwrap().state.value, 12);
}

/// `snapshot_now` on the in-memory store (it is a `SnapshotStore` too): the snapshot is the
/// state at the current version, whatever the policy, and the next load starts there.
#[tokio::test]
async fn snapshot_now_stores_the_current_state_in_memory() {
    use es_core::{SnapshotPolicy, SnapshotStore, SnapshotWrite};
    let store = InMemoryStore::new();
    let counters = Repository::<Counter>::new(store.clone()).with_snapshots(
        Arc::new(store.clone()),
        SnapshotPolicy::Never,
        SnapshotWrite::Inline,
    );
    let id = stream("counter-now");
    for by in [2, 3, 5] {
        counters
            .execute(&id, CounterCommand::Increment(by))
            .await
            .unwrap();
    }
    assert!(store.load_snapshot(&id, "counter").await.unwrap().is_none());
    assert_eq!(
        counters.snapshot_now(&id).await.unwrap(),
        Some(StreamVersion(3))
    );
    let snapshot = store.load_snapshot(&id, "counter").await.unwrap().unwrap();
    assert_eq!(snapshot.stream_version, StreamVersion(3));
    assert_eq!(snapshot.state, serde_json::json!({"value": 10}));
    let loaded = counters.load(&id).await.unwrap();
    assert_eq!(
        (
            loaded.state.value,
            loaded.snapshot_version,
            loaded.events_replayed
        ),
        (10, Some(StreamVersion(3)), 0)
    );
    assert_eq!(
        counters
            .snapshot_now(&stream("counter-none"))
            .await
            .unwrap(),
        None
    );
}
