//! Rebuilding from scratch and in a shadow generation gives the same tables as the live run,
//! and a shadow switch happens while a live worker keeps running.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use es_core::{EventData, EventStore, ExpectedVersion, StreamId, Upcasters};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::{rebuild, RebuildOptions, Worker};
use serde_json::json;

async fn fingerprint(db: &TestDatabase) -> (i64, String) {
    // Through the views: what readers see.
    sqlx::query_as(
        "SELECT count(*), md5(coalesce(string_agg(a::text, ',' ORDER BY position), ''))
         FROM audit_applied a",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn write(store: &PgEventStore, from: u64, to: u64) {
    for i in from..to {
        store
            .append(
                &StreamId::new(format!("r-{}", i % 11)).unwrap(),
                ExpectedVersion::Any,
                vec![EventData::raw("Counted", 1, json!({"n": i}))],
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilds_reproduce_the_live_tables() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, 0, 1500).await;
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(fast_config("live"));
    let live = worker.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        live.run(async {
            let _ = stopped.await;
        })
        .await
    });
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    let live_tables = fingerprint(&db).await;
    assert_eq!(live_tables.0, 1500);

    // Shadow rebuild while the live worker runs and events keep coming.
    let writing = {
        let store = store.clone();
        tokio::spawn(async move { write(&store, 1500, 1800).await })
    };
    let shadow = RebuildOptions {
        shadow: true,
        batch_size: 200,
        ..RebuildOptions::default()
    };
    let mut reports = 0;
    let report = rebuild(&worker, "audit", &shadow, |_| reports += 1)
        .await
        .unwrap();
    assert_eq!(report.generation, 2);
    assert!(reports > 0, "progress was reported");
    writing.await.unwrap();
    // The live worker follows the new generation.
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    let after_shadow = fingerprint(&db).await;
    assert_eq!(after_shadow.0, 1800);
    assert_matches_log(&db.pool, "audit_applied", "audit_streams").await;
    let old_tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'audit_%_g1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(old_tables, 0, "the old generation's tables were dropped");
    let _ = stop.send(());
    running.await.unwrap().unwrap();

    // From scratch, in place, with no worker running.
    let report = rebuild(&worker, "audit", &RebuildOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(report.applied, 1800);
    assert_eq!(
        fingerprint(&db).await,
        after_shadow,
        "rebuild equals the live tables"
    );
    let state: String = sqlx::query_scalar(
        "SELECT state FROM es_projections WHERE name = 'audit' AND role = 'live'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(state, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_rebuild_resumes() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, 0, 2000).await;
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap();
    let options = RebuildOptions {
        batch_size: 100,
        ..RebuildOptions::default()
    };
    // Interrupt after a few batches by dropping the future mid-way.
    {
        let (hit, mut seen) = tokio::sync::watch::channel(false);
        let running = rebuild(&worker, "audit", &options, move |p| {
            if p.applied >= 500 {
                let _ = hit.send(true);
            }
        });
        tokio::select! {
            _ = running => panic!("the rebuild finished before it was interrupted"),
            _ = seen.wait_for(|hit| *hit) => {}
        }
    }
    // The lease of the killed rebuild must expire or be ours: a resumed run takes over after it.
    sqlx::query("UPDATE es_projections SET lease_expires_at = now() WHERE name = 'audit'")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = rebuild(&worker, "audit", &options, |_| {}).await.unwrap();
    assert!(report.resumed);
    assert!(
        report.applied <= 1500,
        "resumed, not restarted: {}",
        report.applied
    );
    assert_matches_log(&db.pool, "audit_applied", "audit_streams").await;
}
