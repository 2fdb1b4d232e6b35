//! Snapshots and historical loads against a real PostgreSQL.
//!
//! Every state is checked against two references: a repository without snapshots (a full
//! replay), and a model computed from the numbers the test wrote. The aggregate's state carries
//! an order-sensitive digest of every event folded in, so a lost, repeated or reordered event
//! changes it.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::{
    Aggregate, DomainEvent, EventData, EventStore, ExpectedVersion, Loaded, Metadata, Repository,
    Snapshot, SnapshotPolicy, SnapshotStore, SnapshotWrite, StoreError, StreamId, StreamVersion,
    Upcasters,
};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

// ---------------------------------------------------------------------------------------------
// The aggregate: a tally of numbers, with a digest of their order.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    count: u64,
    sum: u64,
    digest: u64,
    last: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TallyEvent {
    Added { n: u64 },
}

impl DomainEvent for TallyEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Added", 1)];
}

/// Adds these numbers, one event each (an empty list causes no events).
#[derive(Clone, Debug)]
struct Add(Vec<u64>);

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = Add;
    type Event = TallyEvent;
    type Error = Never;

    fn handle(&self, Add(numbers): Add) -> Result<Vec<TallyEvent>, Never> {
        Ok(numbers
            .into_iter()
            .map(|n| TallyEvent::Added { n })
            .collect())
    }

    fn apply(&mut self, TallyEvent::Added { n }: &TallyEvent) {
        self.count += 1;
        self.sum += n;
        self.digest = self.digest.wrapping_mul(1_000_003).wrapping_add(*n);
        self.last = Some(*n);
    }
}

/// The same aggregate after a release that changed the meaning of its snapshotted state:
/// same type name, same events, STATE_VERSION raised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct TallyV2(Tally);

impl Aggregate for TallyV2 {
    const TYPE: &'static str = Tally::TYPE;
    const STATE_VERSION: u32 = 2;
    type Command = Add;
    type Event = TallyEvent;
    type Error = Never;

    fn handle(&self, command: Add) -> Result<Vec<TallyEvent>, Never> {
        self.0.handle(command)
    }

    fn apply(&mut self, event: &TallyEvent) {
        self.0.apply(event);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// The number carried by the event at stream version `v`.
fn number(v: u64) -> u64 {
    (v * 7919) % 1000 + 1
}

/// The numbers of the events at versions `from + 1 ..= to`.
fn numbers(from: u64, to: u64) -> Vec<u64> {
    (from + 1..=to).map(number).collect()
}

/// The state after the first `n` events, computed without any store.
fn model(n: u64) -> Tally {
    let mut tally = Tally::default();
    for v in 1..=n {
        tally.apply(&TallyEvent::Added { n: number(v) });
    }
    tally
}

fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap()
}

const EVERY: u64 = 100;

/// A repository that never uses snapshots: loads are full replays.
fn replaying<A: Aggregate>(store: &PgEventStore) -> Repository<A> {
    Repository::<A>::new(store.clone())
}

/// A repository with snapshots every 100 events, written before the command returns.
fn snapshotting<A>(store: &PgEventStore) -> Repository<A>
where
    A: Aggregate + Serialize + serde::de::DeserializeOwned,
{
    Repository::<A>::new(store.clone()).with_snapshots(
        Arc::new(store.clone()),
        SnapshotPolicy::EveryNEvents(EVERY),
        SnapshotWrite::Inline,
    )
}

/// Executes commands of `batch` events each until the stream is at `to`.
async fn add_through<A>(repository: &Repository<A>, id: &StreamId, from: u64, to: u64, batch: u64)
where
    A: Aggregate<Command = Add>,
{
    let mut at = from;
    while at < to {
        let next = (at + batch).min(to);
        let outcome = repository
            .execute(id, Add(numbers(at, next)))
            .await
            .unwrap();
        assert_eq!(outcome.stream_version, StreamVersion(next));
        at = next;
    }
}

/// Appends events straight to the store (no repository, so no snapshot).
async fn append_raw(store: &PgEventStore, id: &StreamId, from: u64, to: u64) {
    let events = numbers(from, to)
        .into_iter()
        .map(|n| EventData::from_event(&TallyEvent::Added { n }, Metadata::default()).unwrap())
        .collect();
    store
        .append(id, ExpectedVersion::Exact(StreamVersion(from)), events)
        .await
        .unwrap();
}

/// The snapshot row of a stream: (stream_version, state_version).
async fn snapshot_row(pool: &PgPool, id: &StreamId) -> Option<(i64, i32)> {
    sqlx::query_as(
        "SELECT stream_version, state_version FROM es_snapshots \
         WHERE stream_id = $1 AND aggregate_type = $2",
    )
    .bind(id.as_str())
    .bind(Tally::TYPE)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Checks a load: its version, where it started, how much it replayed, and its state.
fn assert_loaded(loaded: &Loaded<Tally>, version: u64, snapshot: Option<u64>) {
    assert_eq!(loaded.version, StreamVersion(version), "version");
    assert_eq!(
        loaded.snapshot_version,
        snapshot.map(StreamVersion),
        "snapshot version"
    );
    assert_eq!(
        loaded.events_replayed as u64,
        version - snapshot.unwrap_or(0),
        "events replayed"
    );
    assert_eq!(loaded.state, model(version), "state at version {version}");
}

/// A stream of 10,000 events: 9,950 through the snapshotting repository in commands of 128
/// events (the last snapshot lands at 9,950), then 50 appended straight to the store.
async fn ten_thousand(store: &PgEventStore, id: &StreamId) {
    add_through(&snapshotting::<Tally>(store), id, 0, 9_950, 128).await;
    append_raw(store, id, 9_950, 10_000).await;
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_load_from_a_snapshot_like_a_full_replay() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let id = stream("tally-long");
    ten_thousand(&store, &id).await;
    assert_eq!(snapshot_row(&db.pool, &id).await, Some((9_950, 1)));

    let from_snapshot = snapshotting::<Tally>(&store).load(&id).await.unwrap();
    assert!(from_snapshot.events_replayed <= 100);
    assert_loaded(&from_snapshot, 10_000, Some(9_950));

    let full = replaying::<Tally>(&store).load(&id).await.unwrap();
    assert_loaded(&full, 10_000, None);
    assert_eq!(from_snapshot.state, full.state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_state_version_ignores_old_snapshots_until_the_next_one() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let id = stream("tally-upgraded");
    ten_thousand(&store, &id).await;
    assert_eq!(snapshot_row(&db.pool, &id).await, Some((9_950, 1)));

    let upgraded = snapshotting::<TallyV2>(&store);
    // The v1 snapshot is ignored: a full replay, and the right state.
    let loaded = upgraded.load(&id).await.unwrap();
    assert_eq!(loaded.snapshot_version, None);
    assert_eq!(loaded.events_replayed, 10_000);
    assert_eq!(loaded.state.0, model(10_000));

    // A command that does not reach a boundary leaves the old snapshot alone...
    add_through(&upgraded, &id, 10_000, 10_001, 1).await;
    assert_eq!(snapshot_row(&db.pool, &id).await, Some((9_950, 1)));
    let loaded = upgraded.load(&id).await.unwrap();
    assert_eq!(
        (loaded.snapshot_version, loaded.events_replayed),
        (None, 10_001)
    );

    // ...and the next due one replaces it with the new state version.
    add_through(&upgraded, &id, 10_001, 10_130, 129).await;
    assert_eq!(snapshot_row(&db.pool, &id).await, Some((10_130, 2)));
    let loaded = upgraded.load(&id).await.unwrap();
    assert_eq!(loaded.snapshot_version, Some(StreamVersion(10_130)));
    assert_eq!(loaded.events_replayed, 0);
    assert_eq!(loaded.state.0, model(10_130));

    // Code still on the old state version (a rolling deploy) ignores the new snapshot in turn.
    let old = snapshotting::<Tally>(&store).load(&id).await.unwrap();
    assert_loaded(&old, 10_130, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_across_a_boundary_loses_nothing() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let tallies = snapshotting::<Tally>(&store);
    let full = replaying::<Tally>(&store);
    let id = stream("tally-crossing");

    add_through(&tallies, &id, 0, 94, 47).await;
    assert_eq!(snapshot_row(&db.pool, &id).await, None);

    // One command, 36 events: versions 95..=130 cross 100 without ending on it.
    let outcome = tallies.execute(&id, Add(numbers(94, 130))).await.unwrap();
    assert_eq!(outcome.events.len(), 36);
    assert_eq!(outcome.stream_version, StreamVersion(130));
    // The snapshot holds every event of the append, not just those up to the boundary.
    assert_eq!(snapshot_row(&db.pool, &id).await, Some((130, 1)));

    let loaded = tallies.load(&id).await.unwrap();
    assert_loaded(&loaded, 130, Some(130));
    assert_eq!(loaded.state, full.load(&id).await.unwrap().state);

    // Events after the snapshot are replayed on top of it.
    add_through(&tallies, &id, 130, 135, 5).await;
    let loaded = tallies.load(&id).await.unwrap();
    assert_loaded(&loaded, 135, Some(130));
    assert_eq!(loaded.state, full.load(&id).await.unwrap().state);

    // Historical loads below the snapshot replay from the start.
    for n in [94, 99, 100, 101, 129] {
        assert_loaded(
            &tallies
                .load_at_version(&id, StreamVersion(n))
                .await
                .unwrap(),
            n,
            None,
        );
    }
    assert_loaded(
        &tallies
            .load_at_version(&id, StreamVersion(132))
            .await
            .unwrap(),
        132,
        Some(130),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_at_version_equals_a_replay_of_the_first_n_events() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let id = stream("tally-history");
    ten_thousand(&store, &id).await;

    // The reference: the stored events, decoded and folded one by one.
    let upcasters = Upcasters::of::<TallyEvent>();
    let stored = store
        .read_stream(&id, StreamVersion::INITIAL, None)
        .await
        .unwrap();
    let replay = |n: u64| {
        let mut tally = Tally::default();
        for recorded in stored.iter().take(n as usize) {
            let envelope = upcasters
                .decode_required::<TallyEvent>(recorded.clone())
                .unwrap();
            tally.apply(&envelope.event);
        }
        tally
    };

    let with = snapshotting::<Tally>(&store);
    let without = replaying::<Tally>(&store);
    for n in [
        0, 1, 99, 100, 101, 5_000, 9_900, 9_949, 9_950, 9_951, 9_999, 10_000,
    ] {
        let expected = replay(n);
        let full = without
            .load_at_version(&id, StreamVersion(n))
            .await
            .unwrap();
        assert_eq!(full.state, expected, "without snapshots at {n}");
        assert_loaded(&full, n, None);

        let from_snapshot = with.load_at_version(&id, StreamVersion(n)).await.unwrap();
        assert_eq!(from_snapshot.state, expected, "with snapshots at {n}");
        // The store keeps only the latest snapshot (9,950): older versions replay from 0.
        assert_loaded(&from_snapshot, n, (n >= 9_950).then_some(9_950));
    }

    // Past the end: the latest state.
    for repository in [&with, &without] {
        let past = repository
            .load_at_version(&id, StreamVersion(12_000))
            .await
            .unwrap();
        assert_eq!(past.version, StreamVersion(10_000));
        assert_eq!(past.state, replay(10_000));
    }
}

/// The server's clock, after a pause on both sides so that no event written before or after
/// shares its microsecond.
async fn server_now(pool: &PgPool) -> DateTime<Utc> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_as_of_a_time_folds_the_events_recorded_by_then() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let tallies = snapshotting::<Tally>(&store);
    let full = replaying::<Tally>(&store);
    let id = stream("tally-timeline");

    let before = server_now(&db.pool).await;
    add_through(&tallies, &id, 0, 30, 10).await;
    let t30 = server_now(&db.pool).await;
    add_through(&tallies, &id, 30, 280, 50).await;
    let t280 = server_now(&db.pool).await;
    add_through(&tallies, &id, 280, 300, 7).await;
    let after = server_now(&db.pool).await;
    assert_eq!(snapshot_row(&db.pool, &id).await, Some((300, 1)));

    // The premise, read back: events 30 and 31 were recorded either side of t30.
    let recorded_at = |v: i64| {
        let pool = db.pool.clone();
        let id = id.clone();
        async move {
            sqlx::query_scalar::<_, DateTime<Utc>>(
                "SELECT recorded_at FROM es_events WHERE stream_id = $1 AND stream_version = $2",
            )
            .bind(id.as_str())
            .bind(v)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert!(recorded_at(30).await <= t30 && t30 < recorded_at(31).await);

    for (at, version) in [(before, 0), (t30, 30), (t280, 280), (after, 300)] {
        for repository in [&tallies, &full] {
            let loaded = repository.load_as_of(&id, at).await.unwrap();
            assert_eq!(loaded.version, StreamVersion(version));
            assert_eq!(loaded.state, model(version), "as of the time of {version}");
            assert_eq!(loaded.events_replayed as u64, version);
        }
    }
}

/// A snapshot store that is always down.
#[derive(Default)]
struct BrokenSnapshots {
    loads: AtomicUsize,
    saves: AtomicUsize,
}

fn down() -> StoreError {
    StoreError::storage("snapshot store is down", true, "connection refused")
}

#[async_trait]
impl SnapshotStore for BrokenSnapshots {
    async fn load_snapshot(
        &self,
        _stream: &StreamId,
        _aggregate_type: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Err(down())
    }

    async fn save_snapshot(&self, _snapshot: Snapshot) -> Result<(), StoreError> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        Err(down())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_snapshot_store_never_fails_a_command() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());

    for (name, write) in [
        ("tally-inline", SnapshotWrite::Inline),
        ("tally-background", SnapshotWrite::Background),
    ] {
        let broken = Arc::new(BrokenSnapshots::default());
        // No cache: every command loads, and so asks the (failing) snapshot store.
        let tallies = Repository::<Tally>::new(store.clone())
            .without_cache()
            .with_snapshots(broken.clone(), SnapshotPolicy::EveryNEvents(EVERY), write);
        let id = stream(name);
        // 60 events a command: boundaries 100, 200 and 300 are crossed.
        add_through(&tallies, &id, 0, 300, 60).await;

        let loaded = tallies.load(&id).await.unwrap();
        assert_loaded(&loaded, 300, None);
        assert!(broken.loads.load(Ordering::SeqCst) >= 6);
        if write == SnapshotWrite::Inline {
            assert_eq!(broken.saves.load(Ordering::SeqCst), 3);
        }
        // Historical loads go through the same (failing) snapshot lookup.
        assert_loaded(
            &tallies
                .load_at_version(&id, StreamVersion(150))
                .await
                .unwrap(),
            150,
            None,
        );
    }
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM es_snapshots")
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_snapshot_costs_a_replay_not_a_failure() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let tallies = snapshotting::<Tally>(&store);
    let id = stream("tally-corrupt");
    add_through(&tallies, &id, 0, 150, 50).await;
    assert_eq!(snapshot_row(&db.pool, &id).await, Some((100, 1)));

    // Someone (or some bug) left a state that does not decode, at the current state version.
    sqlx::query("UPDATE es_snapshots SET state = '{\"count\": \"many\"}' WHERE stream_id = $1")
        .bind(id.as_str())
        .execute(&db.pool)
        .await
        .unwrap();
    assert_loaded(&tallies.load(&id).await.unwrap(), 150, None);

    // The next due snapshot replaces it, and loads use snapshots again.
    add_through(&tallies, &id, 150, 210, 60).await;
    assert_eq!(snapshot_row(&db.pool, &id).await, Some((210, 1)));
    assert_loaded(&tallies.load(&id).await.unwrap(), 210, Some(210));
}

/// `snapshot_now` on a stream that no snapshotting repository ever wrote to: the snapshot lands
/// at the stream's current version whatever the policy, loads start there, a second call moves
/// it on, an empty stream stores nothing, and a repository without a snapshot store says so.
/// After a release that raised the state version it replaces the old snapshot at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_now_stores_the_current_state() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let id = stream("tally-now");
    append_raw(&store, &id, 0, 250).await;
    let tallies = Repository::<Tally>::new(store.clone()).with_snapshots(
        Arc::new(store.clone()),
        SnapshotPolicy::Never,
        SnapshotWrite::Background,
    );
    assert_eq!(snapshot_row(&db.pool, &id).await, None);
    assert_loaded(&tallies.load(&id).await.unwrap(), 250, None);

    let taken = tallies.snapshot_now(&id).await.unwrap();
    assert_eq!(taken, Some(StreamVersion(250)));
    assert_eq!(snapshot_row(&db.pool, &id).await, Some((250, 1)));
    assert_loaded(&tallies.load(&id).await.unwrap(), 250, Some(250));

    // More events straight to the store; the next call starts from the snapshot and moves it.
    append_raw(&store, &id, 250, 265).await;
    assert_eq!(
        tallies.snapshot_now(&id).await.unwrap(),
        Some(StreamVersion(265))
    );
    assert_eq!(snapshot_row(&db.pool, &id).await, Some((265, 1)));
    assert_loaded(&tallies.load(&id).await.unwrap(), 265, Some(265));
    assert_loaded(
        &replaying::<Tally>(&store).load(&id).await.unwrap(),
        265,
        None,
    );

    // A release raised the state version: one call replaces the old snapshot.
    let upgraded = snapshotting::<TallyV2>(&store);
    assert_eq!(upgraded.load(&id).await.unwrap().snapshot_version, None);
    assert_eq!(
        upgraded.snapshot_now(&id).await.unwrap(),
        Some(StreamVersion(265))
    );
    assert_eq!(snapshot_row(&db.pool, &id).await, Some((265, 2)));
    let loaded = upgraded.load(&id).await.unwrap();
    assert_eq!(
        (loaded.snapshot_version, loaded.events_replayed),
        (Some(StreamVersion(265)), 0)
    );
    assert_eq!(loaded.state.0, model(265));

    let empty = stream("tally-never-written");
    assert_eq!(tallies.snapshot_now(&empty).await.unwrap(), None);
    assert_eq!(snapshot_row(&db.pool, &empty).await, None);

    let without = replaying::<Tally>(&store).snapshot_now(&id).await;
    assert!(
        matches!(without, Err(es_core::RepositoryError::NoSnapshotStore)),
        "{without:?}"
    );
}

/// A snapshot store that fails: `snapshot_now` reports it (policy snapshots only log it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_now_reports_a_failed_write() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let id = stream("tally-now-broken");
    append_raw(&store, &id, 0, 10).await;
    let broken = Arc::new(BrokenSnapshots::default());
    let tallies = Repository::<Tally>::new(store.clone()).with_snapshots(
        broken.clone(),
        SnapshotPolicy::Never,
        SnapshotWrite::Inline,
    );
    let failed = tallies.snapshot_now(&id).await;
    assert!(
        matches!(&failed, Err(es_core::RepositoryError::Store(e)) if e.is_transient()),
        "{failed:?}"
    );
    assert_eq!(broken.saves.load(Ordering::SeqCst), 1);
}
