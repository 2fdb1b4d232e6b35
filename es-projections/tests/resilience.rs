//! The worker survives its connections being killed (as on a server restart or a network cut):
//! it retries with backoff and resumes from its checkpoint, losing and doubling nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use es_core::{EventData, EventStore, ExpectedVersion, StreamId, Upcasters};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::Worker;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_connections_are_retried_from_the_checkpoint() {
    let db = TestDatabase::with_max_connections(20).await;
    // The worker gets its own pool, whose connections we terminate from the side.
    let options: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let worker_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options.application_name("es-worker-under-test"))
        .await
        .unwrap();
    let worker = Worker::new(worker_pool, Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(fast_config("resilient"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
    });

    let store = PgEventStore::new(db.pool.clone());
    let mut killed = 0u64;
    for i in 0..2000u64 {
        store
            .append(
                &StreamId::new(format!("r-{}", i % 13)).unwrap(),
                ExpectedVersion::Any,
                vec![EventData::raw("Counted", 1, json!({"n": i}))],
            )
            .await
            .unwrap();
        if i % 200 == 100 {
            killed += sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'es-worker-under-test') t",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap() as u64;
        }
    }
    assert!(killed > 0, "connections were killed");
    wait_caught_up(&db.pool, "audit", Duration::from_secs(60)).await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert_matches_log(&db.pool, "audit_applied", "audit_streams").await;
    let checker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap();
    assert_verified(&checker, "audit").await;
}
