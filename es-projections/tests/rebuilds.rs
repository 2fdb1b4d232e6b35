//! Rebuilding from scratch and in a shadow generation gives the same tables as the live run;
//! rebuilds succeed beside a busy live worker, which follows a shadow switch; an interrupted
//! rebuild resumes at once and a killed one says when it can; a rebuild that stops on a bad
//! event records why and resumes (or is abandoned).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use es_core::{EventData, EventStore, ExpectedVersion, StreamId, Upcasters};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::{
    rebuild, rebuild_until, ErrorPolicy, ProjectionError, RebuildOptions, Worker,
};
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
        switch: true,
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
    assert_eq!(
        old_tables, 2,
        "the old generation is retired and kept for a rollback"
    );
    assert_eq!(
        es_projections::drop_retired(&worker, "audit")
            .await
            .unwrap(),
        vec![1]
    );
    let old_tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'audit_%_g1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(old_tables, 0, "drop-retired dropped its tables");
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
async fn a_killed_rebuild_resumes_once_its_lease_expires() {
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
    // A killed rebuild holds its lease until it expires, and a new run says until when.
    let refused = rebuild(&worker, "audit", &options, |_| {}).await;
    match refused {
        Err(ProjectionError::LeaseHeld { owner, .. }) => {
            assert!(owner.contains("until"), "{owner}")
        }
        other => panic!("expected the lease to be held, got {other:?}"),
    }
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

fn audit_worker(db: &TestDatabase, owner: &str) -> Worker {
    Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(fast_config(owner))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_rebuild_resumes_at_once() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, 0, 2000).await;
    let worker = audit_worker(&db, "interrupted");
    let options = RebuildOptions {
        batch_size: 100,
        ..RebuildOptions::default()
    };
    let (hit, mut seen) = tokio::sync::watch::channel(false);
    let report = rebuild_until(
        &worker,
        "audit",
        &options,
        move |p| {
            if p.applied >= 500 {
                let _ = hit.send(true);
            }
        },
        async move {
            let _ = seen.wait_for(|hit| *hit).await;
        },
    )
    .await
    .unwrap();
    assert!(report.interrupted);
    // No waiting for a lease: the interrupted run released it.
    let report = rebuild(&worker, "audit", &options, |_| {}).await.unwrap();
    assert!(report.resumed && !report.interrupted);
    assert!(report.applied <= 1500, "resumed: {}", report.applied);
    assert_matches_log(&db.pool, "audit_applied", "audit_streams").await;
    assert_verified(&worker, "audit").await;
}

/// Rebuilds run beside a live worker while writers keep appending (one of them in transactions
/// that commit out of order): 20 in place, then 20 in a shadow. Every one succeeds, the live
/// worker follows each switch, and the tables end equal to a fold of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilds_beside_a_busy_worker_succeed() {
    let db = TestDatabase::with_max_connections(40).await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, 0, 500).await;
    let live = spawn(audit_worker(&db, "busy"));
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (store, pool, done) = (store.clone(), db.pool.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !*done.borrow() {
                if w == 0 {
                    let mut tx = pool.begin().await.unwrap();
                    insert_raw(&mut tx, &format!("raw-{i}"), 1, "Counted", json!({"n": i})).await;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    tx.commit().await.unwrap();
                } else {
                    write(&store, 10_000 * w + i, 10_000 * w + i + 1).await;
                }
                // About 80 events a second in all: slow enough that each rebuild (of the whole
                // log, in a debug build) ends, fast enough that every one runs beside writes.
                tokio::time::sleep(Duration::from_millis(40)).await;
                i += 1;
            }
        }));
    }
    let rebuilder = audit_worker(&db, "rebuilder");
    for round in 0..40 {
        let options = RebuildOptions {
            batch_size: 300,
            shadow: round >= 20,
            switch: round >= 20,
            ..RebuildOptions::default()
        };
        let report = rebuild(&rebuilder, "audit", &options, |_| {})
            .await
            .unwrap_or_else(|e| panic!("rebuild {round} failed: {e}"));
        assert!(!report.interrupted);
        eprintln!(
            "rebuild {round} ({}): {} events in {:.2} s",
            if options.shadow { "shadow" } else { "in place" },
            report.applied,
            report.elapsed.as_secs_f64()
        );
    }
    let _ = done_tx.send(true);
    for writer in writers {
        writer.await.unwrap();
    }
    wait_caught_up(&db.pool, "audit", Duration::from_secs(60)).await;
    // Every writer's transaction has ended: wait for their last positions too.
    let head = es_postgres::log_head(&db.pool).await.unwrap();
    es_projections::wait_for(&db.pool, "audit", head, Duration::from_secs(30))
        .await
        .unwrap();
    let status = es_projections::status(&db.pool).await.unwrap();
    let roles: Vec<&str> = status.projections.iter().map(|p| p.role.as_str()).collect();
    assert_eq!(
        roles,
        ["retired", "live"],
        "no shadow left behind, one way back kept"
    );
    let live_row = &status.projections[1];
    assert_eq!(live_row.state, "running");
    assert_eq!(live_row.generation, 21);
    assert!(live_row.last_error.is_none(), "{:?}", live_row.last_error);
    live.stop().await;
    assert_matches_log(&db.pool, "audit_applied", "audit_streams").await;
    assert_verified(&rebuilder, "audit").await;
}

/// A worker idle at the moment of a shadow switch follows the new generation instead of failing
/// on the old generation's dropped tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_worker_follows_a_shadow_switch() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, 0, 300).await;
    let live = spawn(audit_worker(&db, "idle"));
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    let shadow = RebuildOptions {
        shadow: true,
        switch: true,
        ..RebuildOptions::default()
    };
    for _ in 0..3 {
        rebuild(&audit_worker(&db, "rebuilder"), "audit", &shadow, |_| {})
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        write(&store, 300, 310).await;
        wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    }
    assert!(!live.is_finished(), "the live worker is still running");
    let status = es_projections::status(&db.pool).await.unwrap();
    let live_row = status
        .projections
        .iter()
        .find(|p| p.role == "live")
        .unwrap();
    assert_eq!(live_row.generation, 4);
    assert!(live_row.last_error.is_none());
    live.stop().await;
    assert_matches_log(&db.pool, "audit_applied", "audit_streams").await;
}

async fn append_poison(store: &PgEventStore) {
    store
        .append(
            &StreamId::new("poisoned").unwrap(),
            ExpectedVersion::Any,
            vec![EventData::raw("Poison", 1, json!(null))],
        )
        .await
        .unwrap();
}

/// A rebuild that meets an event its projector refuses stops, records why (`status` shows it),
/// releases its lease, and resumes when run again: here with the dead-letter policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_that_stops_on_a_bad_event_records_it_and_resumes() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, 0, 200).await;
    append_poison(&store).await;
    write(&store, 200, 400).await;
    let worker = audit_worker(&db, "bad");
    let options = RebuildOptions {
        batch_size: 50,
        ..RebuildOptions::default()
    };
    let error = rebuild(&worker, "audit", &options, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(error, ProjectionError::Handler { .. }), "{error}");
    let status = es_projections::status(&db.pool).await.unwrap();
    let row = &status.projections[0];
    assert_eq!(row.state, "rebuilding");
    assert!(row.owner.is_none(), "the lease was released");
    let (recorded, _) = row.last_error.clone().expect("the error is recorded");
    assert!(recorded.contains("poison"), "{recorded}");
    // Resumed at once, parking the bad event this time.
    let parking = RebuildOptions {
        error_policy: ErrorPolicy::DeadLetter,
        ..options.clone()
    };
    let report = rebuild(&worker, "audit", &parking, |_| {}).await.unwrap();
    assert!(report.resumed);
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM es_dead_letters")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(parked, 1);
    assert_eq!(fingerprint(&db).await.0, 400);
    assert_verified(&worker, "audit").await;
}

/// A failed shadow rebuild leaves the live generation serving as it was; its shadow shows the
/// error and is dropped by `abandon_shadow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_shadow_rebuild_leaves_readers_alone_and_can_be_abandoned() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, 0, 100).await;
    let worker = audit_worker(&db, "shadow-bad");
    rebuild(&worker, "audit", &RebuildOptions::default(), |_| {})
        .await
        .unwrap();
    let before = fingerprint(&db).await;
    append_poison(&store).await;
    let shadow = RebuildOptions {
        shadow: true,
        switch: true,
        ..RebuildOptions::default()
    };
    rebuild(&worker, "audit", &shadow, |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        fingerprint(&db).await,
        before,
        "readers see the live tables"
    );
    let status = es_projections::status(&db.pool).await.unwrap();
    let shadow_row = status
        .projections
        .iter()
        .find(|p| p.role == "shadow")
        .expect("the shadow is shown");
    assert!(shadow_row.last_error.is_some());
    assert_eq!(
        es_projections::abandon_shadow(&worker, "audit")
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        es_projections::abandon_shadow(&worker, "audit")
            .await
            .unwrap(),
        None,
        "nothing left to abandon"
    );
    let status = es_projections::status(&db.pool).await.unwrap();
    assert!(status.projections.iter().all(|p| p.role == "live"));
    let shadow_tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'audit_%_g2'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(shadow_tables, 0);
}

/// The fence, step by step: a live worker's batch is held mid-apply (another session locks a
/// table it writes) when an in-place rebuild starts. The rebuild's lease waits for the batch,
/// which commits; then the rebuild empties the tables and replays. No deadlock, no batch applied
/// twice (the audit table's primary key would refuse it), and the worker stands by meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_waits_for_the_batch_in_flight_then_fences_it_out() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, 0, 50).await;
    let live = spawn(audit_worker(&db, "gated"));
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    // Stall the worker's next batch inside apply.
    let mut gate = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE audit_streams_g1 IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *gate)
        .await
        .unwrap();
    write(&store, 50, 60).await;
    let waiting = |query: &'static str| {
        let pool = db.pool.clone();
        async move {
            let until = deadline(30);
            loop {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE wait_event_type = 'Lock' AND query LIKE $1",
                )
                .bind(query)
                .fetch_one(&pool)
                .await
                .unwrap();
                if n > 0 {
                    return;
                }
                assert!(std::time::Instant::now() < until, "nobody waits on {query}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // The worker holds its row (hold.sql) and waits for our table lock.
    waiting("%audit_streams%").await;
    let rebuilder = audit_worker(&db, "fencer");
    let rebuilding = tokio::spawn(async move {
        rebuild(&rebuilder, "audit", &RebuildOptions::default(), |_| {}).await
    });
    // The rebuild's lease waits for the worker's batch.
    waiting("%Takes the lease of the generation of role%").await;
    gate.rollback().await.unwrap();
    let report = rebuilding.await.unwrap().unwrap();
    assert_eq!(report.applied, 60);
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    live.stop().await;
    assert_matches_log(&db.pool, "audit_applied", "audit_streams").await;
    assert_verified(&audit_worker(&db, "check"), "audit").await;
}
