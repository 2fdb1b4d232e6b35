//! Group commit against a real PostgreSQL, a fresh database per test: the store's guarantees
//! hold when appends share transactions (the conformance suite, with its 32-way race on one
//! version, runs on a grouping store), and appends do share them under concurrency.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{event, stream};
use es_core::{AppendResult, EventStore, ExpectedVersion, StoreError, StreamId, StreamVersion};
use es_postgres::testing::TestDatabase;
use es_postgres::{GroupCommit, PgEventStore};
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use uuid::Uuid;

fn grouped(db: &TestDatabase) -> Arc<PgEventStore> {
    // Every exact append through the committers, so that the tests see grouping however the
    // writers happen to be scheduled.
    Arc::new(
        PgEventStore::new(db.pool.clone()).with_group_commit(GroupCommit {
            alone_when_idle: false,
            ..GroupCommit::default()
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grouping_store_conforms() {
    common::conforms(|pool| {
        PgEventStore::new(pool).with_group_commit(GroupCommit {
            max_appends: 8,
            committers: 2,
            alone_when_idle: false,
        })
    })
    .await;
}

/// Sixteen writers on their own streams: every append lands whole at its version, appends share
/// transactions, and each writer's answers match what is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_transactions_and_each_gets_its_own_answer() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = grouped(&db);
    let (writers, appends) = (16, 100);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = stream(&format!("writer-{w}"));
                let mut answers = Vec::new();
                for i in 0..appends {
                    // Two events per append: all or nothing is visible in the versions.
                    let batch = vec![event(i), event(i)];
                    let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
                    let expected = if i == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(StreamVersion(2 * i as u64))
                    };
                    let result = store.append(&s, expected, batch).await.unwrap();
                    answers.push((ids, result));
                }
                (s, answers)
            })
        })
        .collect();
    for task in tasks {
        let (s, answers) = task.await.unwrap();
        let read = store
            .read_stream(&s, StreamVersion::INITIAL, None)
            .await
            .unwrap();
        let versions: Vec<u64> = read.iter().map(|e| e.stream_version.0).collect();
        assert_eq!(versions, (1..=2 * appends as u64).collect::<Vec<_>>());
        let by_id: HashMap<Uuid, _> = read.iter().map(|e| (e.event_id, e)).collect();
        for (
            ids,
            AppendResult {
                stream_version,
                global_position,
            },
        ) in answers
        {
            let last = by_id[&ids[1]];
            assert_eq!(last.stream_version, stream_version, "{s}");
            assert_eq!(last.global_position, global_position, "{s}");
            assert_eq!(by_id[&ids[0]].stream_version.0 + 1, stream_version.0);
        }
    }
    // Each append's rows share a transaction; groups put several appends in one.
    let (appends_total, transactions, split): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) / 2 FROM es_events),
                (SELECT count(DISTINCT transaction_id) FROM es_events),
                (SELECT count(*) FROM (SELECT stream_id, (stream_version + 1) / 2
                                       FROM es_events GROUP BY 1, 2
                                       HAVING count(DISTINCT transaction_id) > 1) s)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(appends_total, (writers * appends) as i64);
    assert_eq!(split, 0, "an append's two events in two transactions");
    assert!(
        transactions < appends_total,
        "{transactions} transactions for {appends_total} appends: no group formed"
    );
}

/// Grouped writers race plain ones (one transaction per append) and each other on the same
/// streams: a writer that commits after a group's snapshot fails the group's statement,
/// which must then write nothing and answer each of its writers on its own. In the end every
/// stream's versions are contiguous, and every append reported as done is in the log, whole,
/// where its answer says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grouped_and_plain_writers_racing_on_the_same_streams() {
    let db = TestDatabase::with_max_connections(40).await;
    // Two grouping stores (two sets of committers, as in two processes) and a plain one.
    let stores = [
        grouped(&db),
        grouped(&db),
        Arc::new(PgEventStore::new(db.pool.clone())),
    ];
    let streams: Vec<StreamId> = (0..4).map(|i| stream(&format!("contended-{i}"))).collect();
    let tasks: Vec<_> = (0..18)
        .map(|t| {
            let store = stores[t % stores.len()].clone();
            let streams = streams.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                let (mut conflicts, mut attempts) = (0, 0);
                while done.len() < 15 && attempts < 2_000 {
                    attempts += 1;
                    let s = &streams[(t + attempts) % streams.len()];
                    let version = store.stream_version(s).await.unwrap().unwrap_or_default();
                    let batch = vec![event(t), event(t), event(t)];
                    let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
                    let expected = if version.0 == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(version)
                    };
                    match store.append(s, expected, batch).await {
                        Ok(appended) => done.push((s.clone(), ids, appended)),
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
                (done, conflicts)
            })
        })
        .collect();
    let mut done = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let (d, c) = task.await.unwrap();
        done.extend(d);
        conflicts += c;
    }
    assert!(
        conflicts > 0,
        "the writers never raced: the test proves nothing"
    );
    let mut logged = HashMap::new();
    for s in &streams {
        let read = stores[0]
            .read_stream(s, StreamVersion::INITIAL, None)
            .await
            .unwrap();
        let versions: Vec<u64> = read.iter().map(|e| e.stream_version.0).collect();
        assert_eq!(versions, (1..=read.len() as u64).collect::<Vec<_>>(), "{s}");
        assert_eq!(read.len() % 3, 0, "{s}: an append was cut");
        logged.extend(read.into_iter().map(|e| (e.event_id, e)));
    }
    for (s, ids, appended) in &done {
        let rows: Vec<_> = ids.iter().map(|id| &logged[id]).collect();
        assert!(rows.iter().all(|e| e.stream_id == *s));
        assert_eq!(rows[2].stream_version, appended.stream_version);
        assert_eq!(rows[2].global_position, appended.global_position);
        assert_eq!(rows[0].stream_version.0 + 2, appended.stream_version.0);
    }
    assert_eq!(
        done.len() * 3,
        logged.len(),
        "only reported appends are in the log"
    );
}

/// One bad append (an event id already in the log) among concurrent good ones: it fails alone,
/// as a typed duplicate, naming the event id; the others, whatever group they shared with it, succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_append_fails_alone() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = grouped(&db);
    let taken = event(0);
    let taken_id = taken.event_id;
    store
        .append(
            &stream("first"),
            ExpectedVersion::NoStream,
            vec![taken.clone()],
        )
        .await
        .unwrap();
    for round in 0..10 {
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let (store, barrier, taken) = (store.clone(), barrier.clone(), taken.clone());
                tokio::spawn(async move {
                    let s = stream(&format!("round-{round}-{t}"));
                    let batch = if t == 7 {
                        vec![event(1), taken]
                    } else {
                        vec![event(1), event(2)]
                    };
                    barrier.wait().await;
                    store.append(&s, ExpectedVersion::NoStream, batch).await
                })
            })
            .collect();
        for (t, task) in tasks.into_iter().enumerate() {
            match (t, task.await.unwrap()) {
                (7, Err(StoreError::DuplicateEventId { event_id })) => {
                    assert_eq!(event_id, taken_id);
                }
                (7, other) => panic!("the duplicate event id was not refused: {other:?}"),
                (_, Ok(appended)) => assert_eq!(appended.stream_version, StreamVersion(2)),
                (_, Err(error)) => panic!("a good append failed with the bad one: {error:?}"),
            }
        }
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1 + 10 * 15 * 2, "the bad appends wrote nothing");
}

/// An outside writer's uncommitted event at (`s`, `version`), and its backend's pid: a group
/// inserting that row waits for this transaction to end.
async fn hold(db: &TestDatabase, s: &str, version: i64) -> (Transaction<'static, Postgres>, i32) {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO es_events (event_id, stream_id, stream_version, event_type,
             schema_version, payload, metadata)
         VALUES (gen_random_uuid(), $1, $2, 'Happened', 1, '{}', '{}')",
    )
    .bind(s)
    .bind(version)
    .execute(&mut *tx)
    .await
    .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    (tx, pid)
}

/// Waits until `n` backends of this database are blocked by the transactions of `pids`.
async fn until_blocked_by(db: &TestDatabase, pids: &[i32], n: i64) {
    for _ in 0..1_000 {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pg_blocking_pids(pid) && $1",
        )
        .bind(pids)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if blocked >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{n} backends never waited for {pids:?}");
}

/// A store with one committer, kept busy by an append that waits for an outside transaction:
/// everything queued meanwhile forms the next group, deterministically.
struct BusyCommitter {
    store: Arc<PgEventStore>,
    blocker: Transaction<'static, Postgres>,
    blocked: tokio::task::JoinHandle<Result<AppendResult, StoreError>>,
}

impl BusyCommitter {
    /// Keeps a new store's committer busy on an append to `blocker`.
    async fn start(db: &TestDatabase, blocker: &str) -> Self {
        let store = Arc::new(
            PgEventStore::new(db.pool.clone()).with_group_commit(GroupCommit {
                max_appends: 64,
                committers: 1,
                alone_when_idle: false,
            }),
        );
        let (tx, pid) = hold(db, blocker, 1).await;
        let blocked = tokio::spawn({
            let (store, blocker) = (store.clone(), stream(blocker));
            async move {
                store
                    .append(&blocker, ExpectedVersion::NoStream, vec![event(0)])
                    .await
            }
        });
        until_blocked_by(db, &[pid], 1).await;
        Self {
            store,
            blocker: tx,
            blocked,
        }
    }

    /// Queues an append (it waits for the group). Queued one after the other, with a pause, so
    /// that the queue's order is the calls' order.
    async fn queue(
        &self,
        s: &str,
        expected: ExpectedVersion,
        events: usize,
    ) -> tokio::task::JoinHandle<Result<AppendResult, StoreError>> {
        let (store, s) = (self.store.clone(), stream(s));
        let queued = tokio::spawn(async move {
            let batch = (0..events).map(event).collect();
            store.append(&s, expected, batch).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        queued
    }

    /// Lets the committer go: the blocked append commits alone, then the queue forms one group.
    async fn release(self) {
        self.blocker.rollback().await.unwrap();
        self.blocked.await.unwrap().unwrap();
    }
}

async fn seed(db: &TestDatabase, streams: &[&str]) {
    let store = PgEventStore::new(db.pool.clone());
    for s in streams {
        store
            .append(&stream(s), ExpectedVersion::NoStream, vec![event(0)])
            .await
            .unwrap();
    }
}

async fn versions(db: &TestDatabase, s: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT stream_version FROM es_events WHERE stream_id = $1 ORDER BY 1")
        .bind(s)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// In one group: good appends, one ahead of its stream, one behind. The statement itself must
/// refuse the two (nothing else would: the one ahead breaks no index).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_checks_every_append_against_its_own_version() {
    let db = TestDatabase::with_max_connections(20).await;
    seed(&db, &["a", "ahead", "behind", "d"]).await;
    let busy = BusyCommitter::start(&db, "blocker").await;
    let good = busy
        .queue("a", ExpectedVersion::Exact(StreamVersion(1)), 1)
        .await;
    let ahead = busy
        .queue("ahead", ExpectedVersion::Exact(StreamVersion(5)), 2)
        .await;
    let behind = busy.queue("behind", ExpectedVersion::NoStream, 1).await;
    let multi = busy
        .queue("d", ExpectedVersion::Exact(StreamVersion(1)), 3)
        .await;
    let fresh = busy.queue("e", ExpectedVersion::NoStream, 2).await;
    busy.release().await;
    assert_eq!(
        good.await.unwrap().unwrap().stream_version,
        StreamVersion(2)
    );
    assert_eq!(
        multi.await.unwrap().unwrap().stream_version,
        StreamVersion(4)
    );
    assert_eq!(
        fresh.await.unwrap().unwrap().stream_version,
        StreamVersion(2)
    );
    for refused in [ahead, behind] {
        match refused.await.unwrap() {
            Err(StoreError::Conflict { actual, .. }) => {
                assert_eq!(actual, Some(StreamVersion(1)))
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(versions(&db, "ahead").await, vec![1]);
    assert_eq!(versions(&db, "behind").await, vec![1]);
    // The three good appends were one group: one transaction.
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT transaction_id) FROM es_events
         WHERE (stream_id IN ('a', 'd') AND stream_version > 1) OR stream_id = 'e'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(transactions, 1);
}

/// A group whose statement waits for an outside writer's uncommitted next version of one of
/// its streams: when that writer commits, the statement fails, and the group is appended one
/// by one: that stream's append is a conflict, the others are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_race_in_a_group_falls_back_to_one_by_one() {
    let db = TestDatabase::with_max_connections(20).await;
    seed(&db, &["raced", "other"]).await;
    let busy = BusyCommitter::start(&db, "blocker").await;
    let raced = busy
        .queue("raced", ExpectedVersion::Exact(StreamVersion(1)), 1)
        .await;
    let other = busy
        .queue("other", ExpectedVersion::Exact(StreamVersion(1)), 2)
        .await;
    // The outside writer takes raced's version 2 without committing yet.
    let (outside, pid) = hold(&db, "raced", 2).await;
    busy.release().await;
    // The group's statement now waits for the outside writer's index entry.
    until_blocked_by(&db, &[pid], 1).await;
    outside.commit().await.unwrap();
    match raced.await.unwrap() {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, Some(StreamVersion(2))),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        other.await.unwrap().unwrap().stream_version,
        StreamVersion(3)
    );
    assert_eq!(versions(&db, "raced").await, vec![1, 2]);
    assert_eq!(versions(&db, "other").await, vec![1, 2, 3]);
}

/// Two groups (two stores, as in two processes) append to the same two streams, queued in
/// opposite orders. Were rows inserted in queue order, this would deadlock for sure: each group
/// is held after its first contended row (a, then b) until the other has taken its own, and
/// then each waits for the other's. Inserted in stream order, one group waits for the other and
/// then falls back: no deadlock, one group's appends win both streams, the other's conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_racing_on_the_same_streams_never_deadlock() {
    let db = TestDatabase::with_max_connections(30).await;
    seed(&db, &["a", "b"]).await;
    let busy = [
        BusyCommitter::start(&db, "blocker-1").await,
        BusyCommitter::start(&db, "blocker-2").await,
    ];
    // Gates sort before "a" and "b"; holds sort between the gates and "a".
    let (gate1, g1) = hold(&db, "0-gate-1", 1).await;
    let (gate2, g2) = hold(&db, "0-gate-2", 1).await;
    let (hold1, h1) = hold(&db, "1-hold-1", 1).await;
    let (hold2, h2) = hold(&db, "1-hold-2", 1).await;
    let one = ExpectedVersion::Exact(StreamVersion(1));
    let mut appends = Vec::new();
    for (store, order) in busy.iter().zip([
        ["0-gate-1", "a", "1-hold-1", "b"],
        ["0-gate-2", "b", "1-hold-2", "a"],
    ]) {
        for s in order {
            let expected = if s.len() > 1 {
                ExpectedVersion::NoStream
            } else {
                one
            };
            appends.push((store.store.clone(), s, store.queue(s, expected, 1).await));
        }
    }
    for store in busy {
        store.release().await;
    }
    // Both groups wait at their gate; then (stream order) at their hold, or (queue order)
    // after taking a and b respectively.
    until_blocked_by(&db, &[g1, g2], 2).await;
    let _ = tokio::join!(gate1.rollback(), gate2.rollback());
    until_blocked_by(&db, &[h1, h2], 2).await;
    let _ = tokio::join!(hold1.rollback(), hold2.rollback());
    let mut winners: HashMap<&str, Vec<usize>> = HashMap::new();
    for (store, s, append) in appends {
        match append.await.unwrap() {
            Ok(_) => winners
                .entry(s)
                .or_default()
                .push(Arc::as_ptr(&store) as usize),
            Err(StoreError::Conflict { .. }) if s.len() == 1 => {}
            Err(other) => panic!("{s}: {other:?}"),
        }
    }
    assert_eq!(winners["a"].len(), 1);
    assert_eq!(winners["a"], winners["b"], "one group won both streams");
    assert_eq!(versions(&db, "a").await, vec![1, 2]);
    assert_eq!(versions(&db, "b").await, vec![1, 2]);
    // Deadlocks are counted per database; a backend reports its counts at the latest when it
    // exits, so close every connection first, then read the count (allowing for the report).
    let url = db.url.clone();
    db.pool.close().await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    for _ in 0..20 {
        let deadlocks: i64 = sqlx::query_scalar(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(deadlocks, 0, "the two groups deadlocked");
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut conn)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
