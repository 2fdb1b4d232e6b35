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
