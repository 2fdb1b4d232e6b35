//! Commits across streams, in the caller's transaction, with idempotency keys and unique values,
//! against a real PostgreSQL.
//!
//! The dangerous interleavings are built step by step: a first transaction is left open at the
//! point that matters (its commit written but not committed), a second one is started and seen
//! to wait for it on a lock (`pg_stat_activity`), then the first commits or rolls back. The races
//! then run many real connections at once and check the invariants on what was stored.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::stream;
use es_core::{
    Aggregate, CommandOptions, Commit, DomainEvent, EventData, EventStore, ExpectedVersion,
    IdempotencyKey, Repository, RepositoryError, StoreError, StreamAppend, StreamId, StreamVersion,
    UniqueChange,
};
use es_postgres::testing::TestDatabase;
use es_postgres::{GroupCommit, PgEventStore};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::PgListener;
use sqlx::PgPool;

/// Waits until a backend of this database waits on a lock: the step under test is blocked.
async fn wait_until_blocked(pool: &PgPool) {
    for _ in 0..2_000 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the second transaction never waited for the first");
}

fn tagged(tag: &str) -> Vec<EventData> {
    vec![EventData::raw("Happened", 1, json!({ "tag": tag }))]
}

fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::for_request(name, &json!({ "command": name })).unwrap()
}

fn keyed(name: &str, tag: &str) -> Commit {
    Commit::new()
        .with(StreamAppend::new(
            stream("a"),
            ExpectedVersion::Any,
            tagged(tag),
        ))
        .with(StreamAppend::new(
            stream("b"),
            ExpectedVersion::Any,
            tagged(tag),
        ))
        .idempotent(key(name))
}

async fn tags(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT payload->>'tag' FROM es_events ORDER BY global_position")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The second execution of a command arrives while the first is written but not committed: it
/// waits for the first, then returns the first's outcome and writes nothing. If the first rolls
/// back instead, the second is the one that writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_command_waits_for_the_first_and_returns_its_outcome() {
    for first_commits in [true, false] {
        let db = TestDatabase::create().await;
        let store = PgEventStore::new(db.pool.clone());
        let mut first = db.pool.begin().await.unwrap();
        let written = store
            .commit_in(&mut first, keyed("pay-1", "first"))
            .await
            .unwrap();
        assert!(!written.replayed);
        let second = tokio::spawn({
            let store = store.clone();
            async move { store.commit(keyed("pay-1", "second")).await }
        });
        wait_until_blocked(&db.pool).await;
        if first_commits {
            first.commit().await.unwrap();
        } else {
            first.rollback().await.unwrap();
        }
        let second = second.await.unwrap().unwrap();
        if first_commits {
            assert!(
                second.replayed,
                "the second execution found the first's key"
            );
            assert_eq!(second.streams, written.streams, "and returned its outcome");
            assert_eq!(tags(&db.pool).await, ["first", "first"]);
        } else {
            assert!(
                !second.replayed,
                "the first rolled back: the second takes the key"
            );
            assert_eq!(tags(&db.pool).await, ["second", "second"]);
        }
    }
}

/// A claim arrives while another stream's claim of the same value is written but not
/// committed: it waits, then is refused naming the holder (or wins if the first rolls back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_waits_for_an_uncommitted_claim_of_the_same_value() {
    let claim = |user: &str| {
        Commit::new().with(
            StreamAppend::new(stream(user), ExpectedVersion::NoStream, tagged(user))
                .with_uniques([UniqueChange::claim("user-email", "ann@example.com")]),
        )
    };
    for first_commits in [true, false] {
        let db = TestDatabase::create().await;
        let store = PgEventStore::new(db.pool.clone());
        let mut first = db.pool.begin().await.unwrap();
        store.commit_in(&mut first, claim("user-1")).await.unwrap();
        let second = tokio::spawn({
            let store = store.clone();
            async move { store.commit(claim("user-2")).await }
        });
        wait_until_blocked(&db.pool).await;
        if first_commits {
            first.commit().await.unwrap();
            match second.await.unwrap() {
                Err(StoreError::UniqueValueTaken { holder, .. }) => {
                    assert_eq!(holder, stream("user-1"))
                }
                other => panic!("the second claim must be refused: {other:?}"),
            }
            assert_eq!(tags(&db.pool).await, ["user-1"]);
        } else {
            first.rollback().await.unwrap();
            second.await.unwrap().unwrap();
            assert_eq!(tags(&db.pool).await, ["user-2"]);
        }
        let holder = store
            .unique_holder("user-email", "ann@example.com")
            .await
            .unwrap();
        let expected = if first_commits { "user-1" } else { "user-2" };
        assert_eq!(holder, Some(stream(expected)));
    }
}

/// A commit writes its streams in stream id order, whatever order it was given them in: blocked
/// on `a`, it has not touched `b`, so commits over the same streams never hold one each and wait
/// for the other (a deadlock). Appending `b` in the commit's given order first would make the
/// third session below wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_takes_its_streams_in_stream_order() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let mut holder = db.pool.begin().await.unwrap();
    store
        .append_in(
            &mut holder,
            &stream("a"),
            ExpectedVersion::NoStream,
            tagged("holder"),
        )
        .await
        .unwrap();
    let blocked = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .commit(
                    Commit::new()
                        .with(StreamAppend::new(
                            stream("b"),
                            ExpectedVersion::NoStream,
                            tagged("pair"),
                        ))
                        .with(StreamAppend::new(
                            stream("a"),
                            ExpectedVersion::NoStream,
                            tagged("pair"),
                        )),
                )
                .await
        }
    });
    wait_until_blocked(&db.pool).await;
    // A third session appends to b: it must not wait for the blocked commit.
    let mut third = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *third)
        .await
        .unwrap();
    let free = store
        .append_in(
            &mut third,
            &stream("b"),
            ExpectedVersion::NoStream,
            tagged("third"),
        )
        .await;
    assert!(free.is_ok(), "the blocked commit held b: {free:?}");
    third.commit().await.unwrap();
    holder.commit().await.unwrap();
    match blocked.await.unwrap() {
        Err(StoreError::Conflict { stream: s, .. }) => assert_eq!(s, stream("a")),
        other => panic!("the commit must conflict on a, the stream it waited for: {other:?}"),
    }
    assert_eq!(tags(&db.pool).await, ["holder", "third"]);
}

/// 32 tasks commit over overlapping pairs of 8 streams (each pair at the versions just read,
/// retried on conflict), beside 8 tasks appending to single streams: every commit is stored
/// whole or not at all, and every stream's versions are contiguous. With and without group
/// commit, whose grouped single appends then race the commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_commits_over_overlapping_streams_are_whole_and_contiguous() {
    for group_commit in [false, true] {
        let db = TestDatabase::with_max_connections(40).await;
        let mut store = PgEventStore::new(db.pool.clone()).without_group_commit();
        if group_commit {
            store = store.with_group_commit(GroupCommit::default());
        }
        let store = Arc::new(store);
        let streams: Vec<StreamId> = (0..8).map(|i| stream(&format!("s{i}"))).collect();
        let mut tasks = Vec::new();
        for task in 0..40usize {
            let (store, streams) = (store.clone(), streams.clone());
            tasks.push(tokio::spawn(async move {
                let mut written = 0;
                for round in 0..15 {
                    let tag = format!("{task}-{round}");
                    loop {
                        let result = if task < 32 {
                            let (x, y) = (&streams[task % 8], &streams[(task + 1 + round) % 8]);
                            if x == y {
                                break;
                            }
                            let mut commit = Commit::new();
                            for s in [x, y] {
                                let at = store.stream_version(s).await.unwrap().unwrap_or_default();
                                commit = commit.with(StreamAppend::new(
                                    s.clone(),
                                    ExpectedVersion::Exact(at),
                                    tagged(&tag),
                                ));
                            }
                            store.commit(commit).await.map(|_| ())
                        } else {
                            let s = &streams[task % 8];
                            let at = store.stream_version(s).await.unwrap().unwrap_or_default();
                            store
                                .append(s, ExpectedVersion::Exact(at), tagged(&tag))
                                .await
                                .map(|_| ())
                        };
                        match result {
                            Ok(()) => {
                                written += 1;
                                break;
                            }
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(other) => panic!("{other:?}"),
                        }
                    }
                }
                written
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT stream_id, stream_version, payload->>'tag' FROM es_events
             ORDER BY stream_id, stream_version",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let mut per_tag: HashMap<String, Vec<String>> = HashMap::new();
        let mut versions: HashMap<String, Vec<i64>> = HashMap::new();
        for (s, version, tag) in rows {
            per_tag.entry(tag).or_default().push(s.clone());
            versions.entry(s).or_default().push(version);
        }
        for (tag, in_streams) in &per_tag {
            let task: usize = tag.split('-').next().unwrap().parse().unwrap();
            let whole = if task < 32 { 2 } else { 1 };
            assert_eq!(
                in_streams.len(),
                whole,
                "commit {tag} is not whole: {in_streams:?}"
            );
        }
        for (s, versions) in versions {
            let contiguous: Vec<i64> = (1..=versions.len() as i64).collect();
            assert_eq!(
                versions, contiguous,
                "stream {s} (group commit: {group_commit})"
            );
        }
    }
}

/// The caller's rows and the events commit together or not at all; a refused append leaves the
/// caller's transaction usable; workers are woken only once the caller commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_in_the_callers_transaction() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    sqlx::query("CREATE TABLE orders (id text PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();
    let orders = || async {
        sqlx::query_scalar::<_, String>("SELECT id FROM orders ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap()
    };

    // A failure after the append, in the caller's own statements: nothing stays.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES ('o-1')")
        .execute(&mut *tx)
        .await
        .unwrap();
    store
        .append_in(
            &mut tx,
            &stream("order-1"),
            ExpectedVersion::NoStream,
            tagged("o-1"),
        )
        .await
        .unwrap();
    let failed = sqlx::query("SELECT 1 / 0").execute(&mut *tx).await;
    assert!(failed.is_err());
    tx.rollback().await.unwrap();
    assert!(orders().await.is_empty());
    assert!(
        tags(&db.pool).await.is_empty(),
        "the events rolled back with the rows"
    );

    // A refused append inside: the transaction goes on and commits the caller's rows.
    store
        .append(
            &stream("order-2"),
            ExpectedVersion::NoStream,
            tagged("first"),
        )
        .await
        .unwrap();
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen(es_postgres::NOTIFY_CHANNEL).await.unwrap();
    // The store's own wake-up for the append above may still be on its way: take it.
    let _ = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES ('o-2')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = store
        .append_in(
            &mut tx,
            &stream("order-2"),
            ExpectedVersion::NoStream,
            tagged("again"),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
    store
        .append_in(
            &mut tx,
            &stream("order-2"),
            ExpectedVersion::Exact(StreamVersion(1)),
            tagged("second"),
        )
        .await
        .unwrap();
    // Not committed yet: PostgreSQL holds the wake-up back.
    let early = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(
        early.is_err(),
        "a wake-up arrived before the commit: {early:?}"
    );
    tx.commit().await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), listener.recv()).await;
    assert!(
        matches!(woken, Ok(Ok(_))),
        "no wake-up after the commit: {woken:?}"
    );
    assert_eq!(orders().await, ["o-2"]);
    assert_eq!(tags(&db.pool).await, ["first", "second"]);
}

/// Idempotency keys are kept for the retention, then free: the same key runs anew, and a prune
/// deletes expired keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_after_the_retention() {
    let db = TestDatabase::create().await;
    let store =
        PgEventStore::new(db.pool.clone()).with_idempotency_retention(Duration::from_secs(3600));
    assert!(!store.commit(keyed("k", "first")).await.unwrap().replayed);
    assert!(store.commit(keyed("k", "again")).await.unwrap().replayed);
    sqlx::query("UPDATE es_idempotency_keys SET created_at = created_at - interval '2 hours'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(store.idempotent_outcome(&key("k")).await.unwrap().is_none());
    assert!(
        !store.commit(keyed("k", "later")).await.unwrap().replayed,
        "an expired key is free"
    );
    sqlx::query("UPDATE es_idempotency_keys SET created_at = created_at - interval '2 hours'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(store.prune_idempotency_keys().await.unwrap(), 1);
    assert_eq!(tags(&db.pool).await, ["first", "first", "later", "later"]);
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Counter {
    value: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Added { n: u64 },
}

impl DomainEvent for CounterEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Added", 1)];
}

#[derive(Debug, thiserror::Error)]
#[error("nothing to add")]
struct Zero;

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = u64;
    type Event = CounterEvent;
    type Error = Zero;

    fn handle(&self, n: u64) -> Result<Vec<CounterEvent>, Zero> {
        if n == 0 {
            return Err(Zero);
        }
        Ok(vec![CounterEvent::Added { n }])
    }

    fn apply(&mut self, CounterEvent::Added { n }: &CounterEvent) {
        self.value += n;
    }
}

/// 16 tasks execute one command with one key at once through the repository: one set of
/// events, 16 equal outcomes. The key with another command, or on another stream, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_executions_of_one_command_write_once() {
    let db = TestDatabase::with_max_connections(20).await;
    let counters = Arc::new(Repository::<Counter>::new(PgEventStore::new(
        db.pool.clone(),
    )));
    let id = stream("counter-1");
    counters.execute(&id, 1).await.unwrap();
    let options = || {
        CommandOptions::default()
            .idempotency_key(IdempotencyKey::for_request("add-5", &5u64).unwrap())
    };
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (counters, id, barrier, options) =
                (counters.clone(), id.clone(), barrier.clone(), options());
            tokio::spawn(async move {
                barrier.wait().await;
                counters.execute_with(&id, 5, options).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| !o.replayed).count(), 1);
    for outcome in &outcomes {
        assert_eq!(outcome.stream_version, StreamVersion(2));
        assert_eq!(outcome.global_position, outcomes[0].global_position);
        assert_eq!(outcome.events, vec![CounterEvent::Added { n: 5 }]);
    }
    assert_eq!(
        counters.load(&id).await.unwrap().state.value,
        6,
        "added once"
    );
    let other = CommandOptions::default()
        .idempotency_key(IdempotencyKey::for_request("add-5", &6u64).unwrap());
    assert!(matches!(
        counters.execute_with(&id, 6, other).await,
        Err(RepositoryError::Store(
            StoreError::IdempotencyKeyReused { .. }
        ))
    ));
    assert!(matches!(
        counters
            .execute_with(&stream("counter-2"), 5, options())
            .await,
        Err(RepositoryError::Store(
            StoreError::IdempotencyKeyReused { .. }
        ))
    ));
    assert_eq!(counters.load(&id).await.unwrap().state.value, 6);
}

/// A commit hands a value from one stream to another (the releasing stream's id sorting after
/// the claiming one's, so the claim has the lower position): live, the claimer holds it, and a
/// rebuild from the log says the same. So does a stream that releases and claims one value in
/// one commit (releases first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_agrees_with_commits_that_hand_values_over() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let change = |claim: bool, value: &str| {
        let kind = if claim { "claim" } else { "release" };
        EventData::raw("Plate", 1, json!({ kind: value }))
    };
    let part = |s: &str, claim: bool, value: &str| {
        let unique = if claim {
            UniqueChange::claim("plate", value)
        } else {
            UniqueChange::release("plate", value)
        };
        StreamAppend::new(stream(s), ExpectedVersion::Any, vec![change(claim, value)])
            .with_uniques([unique])
    };
    store
        .commit(Commit::new().with(part("car-2", true, "AB-123")))
        .await
        .unwrap();
    store
        .commit(
            Commit::new()
                .with(part("car-2", false, "AB-123"))
                .with(part("car-1", true, "AB-123")),
        )
        .await
        .unwrap();
    let both = StreamAppend::new(
        stream("car-3"),
        ExpectedVersion::Any,
        vec![change(true, "CD-456"), change(false, "CD-456")],
    )
    .with_uniques([
        UniqueChange::claim("plate", "CD-456"),
        UniqueChange::release("plate", "CD-456"),
    ]);
    store.commit(Commit::new().with(both)).await.unwrap();
    let live = |store: PgEventStore| async move {
        let mut held = Vec::new();
        for value in ["AB-123", "CD-456"] {
            held.push(store.unique_holder("plate", value).await.unwrap());
        }
        held
    };
    let before = live(store.clone()).await;
    assert_eq!(before, vec![Some(stream("car-1")), Some(stream("car-3"))]);
    let changes_of = |event: &es_core::RecordedEvent| {
        let payload = event.payload.to_value().unwrap();
        let changes: Vec<UniqueChange> = ["release", "claim"]
            .iter()
            .filter_map(|kind| {
                let value = payload.get(*kind)?.as_str()?.to_string();
                Some(if *kind == "claim" {
                    UniqueChange::claim("plate", value)
                } else {
                    UniqueChange::release("plate", value)
                })
            })
            .collect();
        Ok::<_, std::convert::Infallible>(changes)
    };
    assert_eq!(
        store
            .rebuild_unique_claims(&["plate"], changes_of)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        live(store.clone()).await,
        before,
        "the rebuild agrees with the live table"
    );
}

/// A commit takes the unique values it touches in (scope, value) order, a release as much as a
/// claim: blocked on `v1` (another transaction claims it, uncommitted), a commit that claims
/// `v1` and releases `v2` has not touched `v2` yet, so a third session can lock `v2`'s row.
/// Releases first, in the order given, would hold `v2` while waiting on `v1`: with a commit
/// holding `v1` and waiting on `v2`, a cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_takes_its_unique_values_in_order() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let append = |s: &str| StreamAppend::new(stream(s), ExpectedVersion::Any, tagged(s));
    store
        .commit(Commit::new().with(append("b").with_uniques([UniqueChange::claim("plate", "v2")])))
        .await
        .unwrap();
    let mut holder = db.pool.begin().await.unwrap();
    store
        .commit_in(
            &mut holder,
            Commit::new().with(append("a").with_uniques([UniqueChange::claim("plate", "v1")])),
        )
        .await
        .unwrap();
    let blocked = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .commit(Commit::new().with(append("b").with_uniques([
                    UniqueChange::release("plate", "v2"),
                    UniqueChange::claim("plate", "v1"),
                ])))
                .await
        }
    });
    wait_until_blocked(&db.pool).await;
    let mut third = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *third)
        .await
        .unwrap();
    let free = sqlx::query(
        "SELECT stream_id FROM es_unique_claims WHERE scope = 'plate' AND value = 'v2' FOR UPDATE",
    )
    .fetch_optional(&mut *third)
    .await;
    assert!(free.is_ok(), "the blocked commit held v2: {free:?}");
    third.rollback().await.unwrap();
    holder.commit().await.unwrap();
    match blocked.await.unwrap() {
        Err(StoreError::UniqueValueTaken { value, holder, .. }) => {
            assert_eq!((value.as_str(), holder), ("v1", stream("a")))
        }
        other => panic!("v1 went to a first: {other:?}"),
    }
    assert_eq!(
        store.unique_holder("plate", "v2").await.unwrap(),
        Some(stream("b")),
        "the refused commit released nothing"
    );
}

/// Two repositories on pools of their own (two processes, as far as PostgreSQL can tell), both
/// with the default cache and group commit, command one stream. A command decided on a cached
/// state the other moved past conflicts, reloads and is decided again: no command is lost or
/// written twice, whatever the interleaving; first one step at a time, then racing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_caches_of_two_processes_never_write_on_stale_state() {
    let db = TestDatabase::with_max_connections(20).await;
    let other_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(&db.url)
        .await
        .unwrap();
    let first = Arc::new(Repository::<Counter>::new(PgEventStore::new(
        db.pool.clone(),
    )));
    let second = Arc::new(Repository::<Counter>::new(PgEventStore::new(other_pool)));
    let id = stream("shared-counter");
    for _ in 0..3 {
        first.execute(&id, 1).await.unwrap();
    }
    // The second moves the stream on; the first's cached entry (version 3) is now stale.
    second.execute(&id, 10).await.unwrap();
    let outcome = first.execute(&id, 100).await.unwrap();
    assert_eq!(outcome.stream_version, StreamVersion(5));
    assert_eq!(
        outcome.attempts, 1,
        "a stale entry is not counted as contention"
    );
    assert_eq!(first.load(&id).await.unwrap().state.value, 113);

    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let repository = if task % 2 == 0 { &first } else { &second }.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut added = 0;
            for _ in 0..10 {
                match repository.execute(&id, 1).await {
                    Ok(_) => added += 1,
                    Err(RepositoryError::TooManyConflicts { .. }) => {}
                    Err(other) => panic!("{other}"),
                }
            }
            added
        }));
    }
    let mut added = 0;
    for task in tasks {
        added += task.await.unwrap();
    }
    let events = first
        .store()
        .read_stream(&id, StreamVersion(0), None)
        .await
        .unwrap();
    assert_eq!(
        events.len() as u64,
        5 + added,
        "one event per successful command"
    );
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.stream_version == StreamVersion(i as u64 + 1)));
    assert_eq!(first.load(&id).await.unwrap().state.value, 113 + added);
    assert_eq!(second.load(&id).await.unwrap().state.value, 113 + added);
}
