//! Group commit against a real PostgreSQL, a fresh database per test: the store's guarantees
//! hold when appends share transactions (the conformance suite, with its 32-way race on one
//! version, runs on a grouping store), and appends do share them under concurrency.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use es_core::{
    conformance, AppendResult, EventData, EventStore, ExpectedVersion, StoreError, StreamId,
    StreamVersion,
};
use es_postgres::testing::TestDatabase;
use es_postgres::{GroupCommit, PgEventStore};
use serde_json::json;
use uuid::Uuid;

fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap()
}

fn event(i: usize) -> EventData {
    EventData::raw("Happened", 1, json!({ "i": i }))
}

fn grouped(db: &TestDatabase) -> Arc<PgEventStore> {
    Arc::new(PgEventStore::new(db.pool.clone()).with_group_commit(GroupCommit::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grouping_store_conforms() {
    let databases = Arc::new(Mutex::new(Vec::new()));
    let keep = databases.clone();
    conformance::run_all(move || {
        let keep = keep.clone();
        async move {
            let db = TestDatabase::with_max_connections(40).await;
            let store = PgEventStore::new(db.pool.clone()).with_group_commit(GroupCommit {
                max_appends: 8,
                committers: 2,
            });
            keep.lock().unwrap().push(db);
            store
        }
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
/// with the database's complaint; the others, whatever group they shared with it, succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_append_fails_alone() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = grouped(&db);
    let taken = event(0);
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
                (7, Err(StoreError::Storage { message, .. })) => {
                    assert!(message.contains("round-"), "{message}");
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

/// Waits until some backend of this database waits for a lock (a row insert blocked on another
/// transaction's uncommitted index entry).
async fn until_a_backend_waits_for_a_lock(db: &TestDatabase) {
    for _ in 0..1_000 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no backend ever waited for a lock");
}

/// A store with one committer, kept busy by an append that waits for an outside transaction:
/// everything queued meanwhile forms the next group, deterministically.
struct BusyCommitter {
    store: Arc<PgEventStore>,
    blocker: sqlx::Transaction<'static, sqlx::Postgres>,
    blocked: tokio::task::JoinHandle<Result<AppendResult, StoreError>>,
}

impl BusyCommitter {
    async fn start(db: &TestDatabase) -> Self {
        let store = Arc::new(
            PgEventStore::new(db.pool.clone()).with_group_commit(GroupCommit {
                max_appends: 64,
                committers: 1,
            }),
        );
        let mut blocker = db.pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO es_events (event_id, stream_id, stream_version, event_type,
                 schema_version, payload, metadata)
             VALUES (gen_random_uuid(), 'blocker', 1, 'Happened', 1, '{}', '{}')",
        )
        .execute(&mut *blocker)
        .await
        .unwrap();
        let blocked = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .append(
                        &stream("blocker"),
                        ExpectedVersion::NoStream,
                        vec![event(0)],
                    )
                    .await
            }
        });
        until_a_backend_waits_for_a_lock(db).await;
        Self {
            store,
            blocker,
            blocked,
        }
    }

    /// Queues an append (it waits for the group).
    fn queue(
        &self,
        s: &str,
        expected: ExpectedVersion,
        events: usize,
    ) -> tokio::task::JoinHandle<Result<AppendResult, StoreError>> {
        let (store, s) = (self.store.clone(), stream(s));
        tokio::spawn(async move {
            let batch = (0..events).map(event).collect();
            store.append(&s, expected, batch).await
        })
    }

    /// Lets the committer go: the blocked append finds "blocker" free and commits alone, then
    /// the queue forms one group.
    async fn release(self) {
        // Let the queued tasks reach the queue first.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
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
    let busy = BusyCommitter::start(&db).await;
    let good = busy.queue("a", ExpectedVersion::Exact(StreamVersion(1)), 1);
    let ahead = busy.queue("ahead", ExpectedVersion::Exact(StreamVersion(5)), 2);
    let behind = busy.queue("behind", ExpectedVersion::NoStream, 1);
    let multi = busy.queue("d", ExpectedVersion::Exact(StreamVersion(1)), 3);
    let fresh = busy.queue("e", ExpectedVersion::NoStream, 2);
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
    let busy = BusyCommitter::start(&db).await;
    let raced = busy.queue("raced", ExpectedVersion::Exact(StreamVersion(1)), 1);
    let other = busy.queue("other", ExpectedVersion::Exact(StreamVersion(1)), 2);
    // The outside writer takes raced's version 2 without committing yet.
    let mut outside = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO es_events (event_id, stream_id, stream_version, event_type,
             schema_version, payload, metadata)
         VALUES (gen_random_uuid(), 'raced', 2, 'Happened', 1, '{}', '{}')",
    )
    .execute(&mut *outside)
    .await
    .unwrap();
    busy.release().await;
    // The group's statement now waits for the outside writer's index entry.
    until_a_backend_waits_for_a_lock(&db).await;
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
