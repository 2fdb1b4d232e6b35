//! `verify` proves a projection was delivered every committed event up to its checkpoint, and
//! names the first it was not: checked on a clean run, on a planted loss (the cursor the old
//! hole bound produced: a hole forgotten while its writer ran), on a planted double delivery,
//! after a rebuild, and through `status`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use es_core::{EventData, EventStore, ExpectedVersion, StreamId, Upcasters};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::{rebuild, RebuildOptions, Worker};
use serde_json::json;

fn worker(db: &TestDatabase) -> Worker {
    Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(fast_config("verify"))
}

async fn run_until_caught_up(db: &TestDatabase) {
    run_until_covered(db, None).await;
}

/// Runs a worker until it covers the head of the log (and `position`, which may be in a hole).
async fn run_until_covered(db: &TestDatabase, position: Option<i64>) {
    let w = worker(db);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        w.run(async {
            let _ = stopped.await;
        })
        .await
    });
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    if let Some(position) = position {
        es_projections::wait_for(
            &db.pool,
            "audit",
            es_core::GlobalPosition(position),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

async fn append(store: &PgEventStore, stream: &str, n: i64) -> i64 {
    store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![EventData::raw("Counted", 1, json!({ "n": n }))],
        )
        .await
        .unwrap()
        .global_position
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_run_verifies_and_status_shows_it() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    // Out of order: an open transaction with a lower position, and a rolled-back one.
    let mut open = db.pool.begin().await.unwrap();
    let open_position = insert_raw(&mut open, "open", 1, "Counted", json!({"n": 1})).await;
    let mut rolled_back = db.pool.begin().await.unwrap();
    insert_raw(&mut rolled_back, "gone", 1, "Counted", json!({"n": 1})).await;
    for i in 0..300 {
        append(&store, &format!("s-{}", i % 7), i).await;
    }
    rolled_back.rollback().await.unwrap();
    run_until_caught_up(&db).await;
    let report = es_projections::verify(&worker(&db), "audit").await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.delivered, 300);
    assert!(
        report.awaited >= 1,
        "the open transaction's position is awaited"
    );
    open.commit().await.unwrap();
    run_until_covered(&db, Some(open_position)).await;
    let report = es_projections::verify(&worker(&db), "audit").await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.delivered, 301);
    assert!(report.checked_to.0 > open_position);
    let status = es_projections::status(&db.pool).await.unwrap();
    let verified = status.projections[0].last_verified.clone().unwrap();
    assert!(verified.ok);
    assert!(status.to_string().contains("ok "), "{status}");
}

/// The loss the old bound caused, planted: while B's transaction is open, its hole is dropped
/// from the stored cursor. The worker never applies B's event; `verify` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planted_loss_is_named() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let mut b = db.pool.begin().await.unwrap();
    let b_position = insert_raw(&mut b, "b-stream", 1, "Counted", json!({"n": 1})).await;
    for i in 0..20 {
        append(&store, "a-stream", i).await;
    }
    run_until_caught_up(&db).await;
    // What `advance` did with the old bound: forget the hole while its writer still runs.
    sqlx::query("UPDATE es_projections SET holes = '[]' WHERE name = 'audit'")
        .execute(&db.pool)
        .await
        .unwrap();
    b.commit().await.unwrap();
    append(&store, "a-stream", 99).await;
    run_until_caught_up(&db).await;
    let report = es_projections::verify(&worker(&db), "audit").await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.missing_count, 1);
    let missing = &report.missing[0];
    assert_eq!(missing.stream.as_str(), "b-stream");
    assert_eq!(missing.stream_version.0, 1);
    assert_eq!(missing.position.0, b_position);
    assert_eq!(
        (missing.event_type.as_str(), missing.schema_version),
        ("Counted", 1),
        "as stored"
    );
    let text = report.to_string();
    assert!(
        text.contains("b-stream") && text.contains("never delivered"),
        "{text}"
    );
    let status = es_projections::status(&db.pool).await.unwrap();
    assert!(!status.projections[0].last_verified.as_ref().unwrap().ok);
    assert!(status.to_string().contains("FAILED"), "{status}");

    // A rebuild repairs it, and starts a ledger that covers the whole log.
    rebuild(&worker(&db), "audit", &RebuildOptions::default(), |_| {})
        .await
        .unwrap();
    let report = es_projections::verify(&worker(&db), "audit").await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.delivered, 22);
    assert_eq!(report.checked_from.0, 0);
}

/// A position recorded twice in the ledger (a batch applied twice) fails verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planted_double_delivery_is_found() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    for i in 0..10 {
        append(&store, "s", i).await;
    }
    run_until_caught_up(&db).await;
    assert_verified(&worker(&db), "audit").await;
    sqlx::query(
        "INSERT INTO es_applied_ranges (projection, generation, first_position, last_position)
         VALUES ('audit', 1, 0, 3)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let report = es_projections::verify(&worker(&db), "audit").await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.duplicated, vec![(1, 10)]);
}

/// A database migrated from a version without the ledger verifies what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn positions_before_the_ledger_are_not_judged() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    for i in 0..10 {
        append(&store, "s", i).await;
    }
    run_until_caught_up(&db).await;
    // As migration 0005 leaves an existing projection: no ledger below its watermark.
    sqlx::query("DELETE FROM es_applied_ranges")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE es_projections SET ledger_from = watermark")
        .execute(&db.pool)
        .await
        .unwrap();
    for i in 0..5 {
        append(&store, "s", i).await;
    }
    run_until_caught_up(&db).await;
    let report = es_projections::verify(&worker(&db), "audit").await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!((report.checked_from.0, report.delivered), (10, 5));
}

/// During a rolling upgrade an older binary applies batches without writing the ledger; the next
/// batch of a new one notices that the watermark moved and stops judging what came before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_of_an_older_binary_are_not_called_lost() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    for i in 0..10 {
        append(&store, "s", i).await;
    }
    run_until_caught_up(&db).await;
    // What an older worker's batch leaves: the checkpoint moved, no ledger runs.
    for i in 0..5 {
        append(&store, "old", i).await;
    }
    let head = es_postgres::log_head(&db.pool).await.unwrap().0;
    sqlx::query("UPDATE es_projections SET watermark = $1 WHERE name = 'audit'")
        .bind(head)
        .execute(&db.pool)
        .await
        .unwrap();
    for i in 0..3 {
        append(&store, "new", i).await;
    }
    run_until_caught_up(&db).await;
    let report = es_projections::verify(&worker(&db), "audit").await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!((report.checked_from.0, report.delivered), (head, 3));
}
