//! Blue/green through the CLI: a new version of a projector is built as a shadow beside the live
//! one, compared, switched to, rolled back and switched to again, while workers of both versions
//! run at once. Readers always see a complete generation, and no worker ever writes a generation
//! built for another version of its code.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use es_core::{EventData, EventEnvelope, EventStore, ExpectedVersion, StreamId, Upcasters};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::{ProjectionError, Projector, ProjectorError, Tables, Worker};
use serde_json::json;
use sqlx::{PgConnection, PgPool};

/// Per stream, the sum of its numbers: version 1 of the code. Version 2 "fixes" it to count
/// twice, so the generations differ in every row. Each row records the version that wrote it.
struct Totals<const V: u32>;

#[async_trait]
impl<const V: u32> Projector for Totals<V> {
    type Event = TestEvent;
    const VERSION: u32 = V;

    fn name(&self) -> &str {
        "totals"
    }

    fn tables(&self) -> &[&'static str] {
        &["totals"]
    }

    async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError> {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (stream_id text PRIMARY KEY, total bigint NOT NULL,
                 written_by integer NOT NULL)",
            tables.get("totals")?
        ))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        events: &[EventEnvelope<TestEvent>],
    ) -> Result<(), ProjectorError> {
        let table = tables.get("totals")?;
        for e in events {
            let TestEvent::Counted { n } = e.event else {
                return Err("poison".into());
            };
            sqlx::query(&format!(
                "INSERT INTO {table} (stream_id, total, written_by) VALUES ($1, $2, $3)
                 ON CONFLICT (stream_id) DO UPDATE
                 SET total = {table}.total + EXCLUDED.total, written_by = EXCLUDED.written_by"
            ))
            .bind(e.stream_id.as_str())
            .bind(n * i64::from(V))
            .bind(V as i32)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

fn worker<const V: u32>(pool: &PgPool, owner: &str) -> Worker {
    Worker::new(pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Totals::<V>)
        .unwrap()
        .with_config(fast_config(owner))
}

/// Runs the CLI of a binary with projector version `V`.
async fn cli<const V: u32>(db: &TestDatabase, args: &[&str]) -> ExitCode {
    let mut argv = vec!["worker", "--database-url", &db.url];
    argv.extend_from_slice(args);
    let built = worker::<V>(&db.pool, &format!("cli-v{V}"));
    es_projections::cli::main_from("worker", argv, move |_| Ok(built)).await
}

async fn write(store: &PgEventStore, from: i64, to: i64) {
    for i in from..to {
        store
            .append(
                &StreamId::new(format!("s-{}", i % 7)).unwrap(),
                ExpectedVersion::Any,
                vec![EventData::raw("Counted", 1, json!({"n": i}))],
            )
            .await
            .unwrap();
    }
}

/// What version `v` of the code builds from the whole log, per stream.
async fn fold(pool: &PgPool, v: i64) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT stream_id, sum((payload->>'n')::bigint * $1)::bigint FROM es_events
         GROUP BY stream_id ORDER BY stream_id",
    )
    .bind(v)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// What readers see.
async fn view(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT stream_id, total FROM totals ORDER BY stream_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Waits until generation `generation` has applied the whole log.
async fn wait_generation(pool: &PgPool, generation: i32) {
    let until = deadline(30);
    loop {
        let (watermark, head): (i64, i64) = sqlx::query_as(
            "SELECT p.watermark, (SELECT coalesce(max(global_position), 0) FROM es_events)
             FROM es_projections p WHERE p.name = 'totals' AND p.generation = $1",
        )
        .bind(generation)
        .fetch_one(pool)
        .await
        .unwrap();
        if watermark >= head {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "generation {generation} stuck at {watermark} of {head}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every generation's table holds only rows written by the version the generation is built by.
async fn assert_versions_kept(pool: &PgPool) {
    let generations: Vec<(i32, i32)> =
        sqlx::query_as("SELECT generation, code_version FROM es_projections WHERE name = 'totals'")
            .fetch_all(pool)
            .await
            .unwrap();
    for (generation, version) in generations {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("totals_g{generation}"))
            .fetch_one(pool)
            .await
            .unwrap();
        if !exists {
            continue;
        }
        let wrong: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM totals_g{generation} WHERE written_by <> $1"
        ))
        .bind(version)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(
            wrong, 0,
            "generation {generation} (version {version}) has rows written by another version"
        );
    }
}

fn role_of(rows: &[(i32, String, i32)], generation: i32) -> Option<String> {
    rows.iter().find(|r| r.0 == generation).map(|r| r.1.clone())
}

async fn generations(pool: &PgPool) -> Vec<(i32, String, i32)> {
    sqlx::query_as(
        "SELECT generation, role, code_version FROM es_projections WHERE name = 'totals'
         ORDER BY generation",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Reads the view in a loop and checks every read is a whole generation: exactly the fold of
/// the log by version 1 or by version 2, never a mix or a generation still filling up. Writes
/// are paused while it runs, so both folds are fixed.
fn watch_readers(
    pool: PgPool,
    folds: [Vec<(String, i64)>; 2],
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let handle = tokio::spawn(async move {
        let mut reads = 0u64;
        while !stopping.load(Ordering::Relaxed) {
            let seen = view(&pool).await;
            assert!(
                folds.contains(&seen),
                "a reader saw a half-built or mixed table: {seen:?}"
            );
            reads += 1;
        }
        reads
    });
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_compare_switch_rollback_and_switch_again_with_both_versions_running() {
    let db = TestDatabase::with_max_connections(40).await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, 0, 300).await;

    // Version 1 is deployed and live.
    let old = spawn(worker::<1>(&db.pool, "old"));
    wait_caught_up(&db.pool, "totals", Duration::from_secs(30)).await;
    assert_eq!(view(&db.pool).await, fold(&db.pool, 1).await);

    // Version 2 is deployed beside it: it does not touch generation 1.
    let new = spawn(worker::<2>(&db.pool, "new"));
    write(&store, 300, 350).await;
    wait_generation(&db.pool, 1).await;
    assert_versions_kept(&db.pool).await;

    // The shadow: built by version 2, then kept caught up by the version 2 worker.
    assert_eq!(
        cli::<2>(&db, &["rebuild", "totals", "--shadow"]).await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        generations(&db.pool).await,
        vec![(1, "live".into(), 1), (2, "shadow".into(), 2)]
    );
    write(&store, 350, 450).await;
    wait_generation(&db.pool, 1).await;
    wait_generation(&db.pool, 2).await;
    assert_eq!(
        view(&db.pool).await,
        fold(&db.pool, 1).await,
        "readers still see version 1"
    );
    assert_versions_kept(&db.pool).await;

    // Compare: every row differs (version 2 doubles), and the sample shows them.
    let comparison = es_projections::compare(&worker::<2>(&db.pool, "c"), "totals", 3)
        .await
        .unwrap();
    assert!(!comparison.same(), "{comparison}");
    let table = &comparison.tables[0];
    assert_eq!(table.live.as_ref().unwrap().rows, 7);
    assert_eq!(table.other.as_ref().unwrap().rows, 7);
    assert_eq!(
        (table.only_live.len(), table.only_other.len()),
        (3, 3),
        "{comparison}"
    );
    assert!(
        comparison.to_string().contains("rows only in shadow"),
        "{comparison}"
    );
    assert_eq!(
        cli::<2>(&db, &["compare", "totals"]).await,
        ExitCode::FAILURE
    );

    // A version 1 binary cannot switch to a generation of version 2.
    let refused = es_projections::switch(&worker::<1>(&db.pool, "c1"), "totals").await;
    assert!(
        matches!(
            refused,
            Err(ProjectionError::VersionMismatch {
                built: 2,
                ours: 1,
                ..
            })
        ),
        "{refused:?}"
    );

    // Switch, with readers watching and writes paused.
    let folds = [fold(&db.pool, 1).await, fold(&db.pool, 2).await];
    let (stop_readers, readers) = watch_readers(db.pool.clone(), folds.clone());
    assert_eq!(
        cli::<2>(&db, &["switch", "totals"]).await,
        ExitCode::SUCCESS
    );
    stop_readers.store(true, Ordering::Relaxed);
    assert!(readers.await.unwrap() > 0);
    assert_eq!(
        view(&db.pool).await,
        folds[1],
        "readers see version 2, complete"
    );
    assert_eq!(
        role_of(&generations(&db.pool).await, 1).as_deref(),
        Some("retired")
    );

    // Both keep going: version 2 the live one, version 1 the retired one (the way back).
    write(&store, 450, 520).await;
    wait_generation(&db.pool, 2).await;
    wait_generation(&db.pool, 1).await;
    assert_eq!(view(&db.pool).await, fold(&db.pool, 2).await);
    assert_versions_kept(&db.pool).await;
    let comparison = es_projections::compare(&worker::<2>(&db.pool, "c"), "totals", 1)
        .await
        .unwrap();
    assert_eq!(comparison.other.role, "retired");

    // Roll back with the old binary; version 2 becomes the shadow.
    assert_eq!(
        cli::<2>(&db, &["rollback", "totals"]).await,
        ExitCode::FAILURE,
        "not with v2"
    );
    let folds = [fold(&db.pool, 1).await, fold(&db.pool, 2).await];
    let (stop_readers, readers) = watch_readers(db.pool.clone(), folds.clone());
    assert_eq!(
        cli::<1>(&db, &["rollback", "totals"]).await,
        ExitCode::SUCCESS
    );
    stop_readers.store(true, Ordering::Relaxed);
    readers.await.unwrap();
    assert_eq!(
        view(&db.pool).await,
        folds[0],
        "readers see version 1 again, complete"
    );
    assert_eq!(
        generations(&db.pool).await,
        vec![(1, "live".into(), 1), (2, "shadow".into(), 2)]
    );

    // Forward again.
    write(&store, 520, 560).await;
    wait_generation(&db.pool, 2).await;
    assert_eq!(
        cli::<2>(&db, &["switch", "totals"]).await,
        ExitCode::SUCCESS
    );
    assert_eq!(view(&db.pool).await, fold(&db.pool, 2).await);
    write(&store, 560, 600).await;
    wait_generation(&db.pool, 2).await;
    wait_generation(&db.pool, 1).await;
    assert_versions_kept(&db.pool).await;

    // Done with version 1: the old workers go, the retired generation is dropped.
    old.stop().await;
    assert_eq!(
        cli::<2>(&db, &["drop-retired", "totals"]).await,
        ExitCode::SUCCESS
    );
    assert_eq!(generations(&db.pool).await, vec![(2, "live".into(), 2)]);
    let gone: bool = sqlx::query_scalar("SELECT to_regclass('totals_g1') IS NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(gone, "the retired tables are dropped");
    assert_eq!(
        cli::<2>(&db, &["rollback", "totals"]).await,
        ExitCode::FAILURE,
        "no way back now"
    );
    write(&store, 600, 620).await;
    wait_generation(&db.pool, 2).await;
    assert_eq!(view(&db.pool).await, fold(&db.pool, 2).await);
    assert_eq!(
        cli::<2>(&db, &["verify", "totals"]).await,
        ExitCode::SUCCESS
    );
    new.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_refuse_what_would_lose_the_way_back() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, 0, 100).await;
    let v1 = worker::<1>(&db.pool, "v1");
    let v2 = worker::<2>(&db.pool, "v2");
    let refused = |r: Result<es_projections::Switched, ProjectionError>| match r {
        Err(ProjectionError::Generations { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };

    // Nothing to switch to, nothing to roll back to, nothing to compare with.
    es_projections::rebuild(&v1, "totals", &Default::default(), |_| {})
        .await
        .unwrap();
    assert!(
        refused(es_projections::switch(&v1, "totals").await).contains("rebuild totals --shadow")
    );
    assert!(
        refused(es_projections::rollback(&v1, "totals").await).contains("no retired generation")
    );
    assert!(matches!(
        es_projections::compare(&v1, "totals", 5).await,
        Err(ProjectionError::Generations { .. })
    ));

    // A built shadow is not rebuilt by accident.
    let shadow = es_projections::RebuildOptions {
        shadow: true,
        ..Default::default()
    };
    es_projections::rebuild(&v2, "totals", &shadow, |_| {})
        .await
        .unwrap();
    let again = es_projections::rebuild(&v2, "totals", &shadow, |_| {}).await;
    assert!(
        matches!(again, Err(ProjectionError::Generations { ref reason, .. }) if reason.contains("switch totals")),
        "{again:?}"
    );

    // Nor can a rollback go through while a shadow exists (it would become the shadow).
    es_projections::switch(&v2, "totals").await.unwrap();
    let rebuilt = es_projections::rebuild(&v2, "totals", &shadow, |_| {})
        .await
        .unwrap();
    assert!(!rebuilt.live);

    // Same code on both sides: compare finds them equal.
    let comparison = es_projections::compare(&v2, "totals", 5).await.unwrap();
    assert!(comparison.same(), "{comparison}");
    assert_eq!(
        cli::<2>(&db, &["compare", "totals"]).await,
        ExitCode::SUCCESS
    );
    assert!(refused(es_projections::rollback(&v1, "totals").await).contains("shadow generation"));

    // A second switch drops the older retired generation: one way back is kept. No worker runs,
    // so the shadow is behind: the switch applies what it has not seen under its lock.
    write(&store, 100, 150).await;
    let switched = es_projections::switch(&v2, "totals").await.unwrap();
    assert_eq!(switched.applied, 50);
    assert_eq!(view(&db.pool).await, fold(&db.pool, 2).await);
    assert_eq!(
        generations(&db.pool).await,
        vec![(2, "retired".into(), 2), (3, "live".into(), 2)]
    );
    let gone: bool = sqlx::query_scalar("SELECT to_regclass('totals_g1') IS NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(gone);
}
