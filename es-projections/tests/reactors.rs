//! Reactors against a real PostgreSQL: at least once delivery with each effect made once by its
//! event id, retries with backoff, dead letters that keep per-stream order, retry and skip
//! carried out by the lease holder (or by the CLI when none holds it), stop on failure.
//!
//! The effect here is a row in a table of the test's own, written on a connection of its own
//! (outside the framework's transactions, as a mail or an HTTP call would be), keyed by the
//! event id: `effects` holds each effect once however often the event is delivered, and
//! `deliveries` counts every delivery.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use es_core::{EventData, EventEnvelope, EventStore, ExpectedVersion, StreamId, Upcasters};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::dead_letters::{self, Action, Cause, LetterState, Target};
use es_projections::{
    OnFailure, ProjectionError, ReactionError, Reactor, ReactorOptions, RetryPolicy, Worker,
};
use serde_json::json;
use sqlx::PgPool;

/// What the test reactor does.
#[derive(Default)]
struct Behaviour {
    /// Fail this many first attempts of events whose `n` is a multiple of 3 (transiently).
    transient_failures: u32,
    /// Poison fails permanently until cured.
    cured: AtomicBool,
    /// Hang forever after the effect of the event at this position (a crash before the
    /// checkpoint, when the test then drops the worker).
    hang_after: Mutex<Option<i64>>,
    /// Told when it hangs.
    hung: tokio::sync::Notify,
    /// How long each reaction takes.
    slow: Duration,
}

struct Effects {
    pool: PgPool,
    behaviour: Arc<Behaviour>,
}

#[async_trait]
impl Reactor for Effects {
    type Event = TestEvent;

    fn name(&self) -> &str {
        "effects"
    }

    async fn react(
        &self,
        event: &EventEnvelope<TestEvent>,
        attempt: u32,
    ) -> Result<(), ReactionError> {
        sqlx::query("INSERT INTO deliveries (event_id, attempt) VALUES ($1, $2)")
            .bind(event.event_id)
            .bind(attempt as i32)
            .execute(&self.pool)
            .await
            .map_err(ReactionError::transient)?;
        match &event.event {
            TestEvent::Poison if !self.behaviour.cured.load(Ordering::SeqCst) => {
                return Err(ReactionError::transient("poison: the service refuses it"))
            }
            TestEvent::Counted { n }
                if n % 3 == 0 && attempt <= self.behaviour.transient_failures =>
            {
                return Err(ReactionError::transient("the service is busy"))
            }
            _ => {}
        }
        // The effect, keyed by the event id; its stream order is checked as it is made.
        sqlx::query(
            "INSERT INTO effects (event_id, stream_id, stream_version, position, made_after)
             VALUES ($1, $2, $3, $4,
                     (SELECT coalesce(max(stream_version), 0) FROM effects WHERE stream_id = $2))
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event.event_id)
        .bind(event.stream_id.as_str())
        .bind(event.stream_version.0 as i64)
        .bind(event.global_position.0)
        .execute(&self.pool)
        .await
        .map_err(ReactionError::transient)?;
        tokio::time::sleep(self.behaviour.slow).await;
        let hang = *self.behaviour.hang_after.lock().unwrap();
        if hang == Some(event.global_position.0) {
            self.behaviour.hung.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

async fn effect_tables(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE effects (event_id uuid PRIMARY KEY, stream_id text NOT NULL,
             stream_version bigint NOT NULL, position bigint NOT NULL, made_after bigint NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("CREATE TABLE deliveries (event_id uuid NOT NULL, attempt int NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

async fn append(store: &PgEventStore, stream: &str, event_type: &str, n: i64) -> i64 {
    let payload = if event_type == "Poison" {
        json!(null)
    } else {
        json!({ "n": n })
    };
    store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![EventData::raw(event_type, 1, payload)],
        )
        .await
        .unwrap()
        .global_position
        .0
}

fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        first_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    }
}

fn worker(
    db: &TestDatabase,
    behaviour: &Arc<Behaviour>,
    options: ReactorOptions,
    owner: &str,
) -> Worker {
    let reactor = Effects {
        pool: db.pool.clone(),
        behaviour: behaviour.clone(),
    };
    Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .reactor_with(reactor, options)
        .unwrap()
        .with_config(fast_config(owner))
}

/// Effects made, and effects made out of stream order (made when the stream's last effect was
/// not the version before).
async fn effects(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE made_after <> stream_version - 1) FROM effects",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_each_effect_is_made_once() {
    let db = TestDatabase::create().await;
    effect_tables(&db.pool).await;
    let store = PgEventStore::new(db.pool.clone());
    for n in 0..10 {
        for stream in ["a", "b", "c"] {
            append(&store, stream, "Counted", n).await;
        }
    }
    let behaviour = Arc::new(Behaviour {
        transient_failures: 2,
        ..Behaviour::default()
    });
    let options = ReactorOptions {
        retry: fast_retries(5),
        ..ReactorOptions::default()
    };
    let worker = worker(&db, &behaviour, options, "reactor");
    let running = spawn(worker.clone());
    wait_caught_up(&db.pool, "effects", Duration::from_secs(30)).await;
    running.stop().await;
    assert_eq!(
        effects(&db.pool).await,
        (30, 0),
        "30 effects, in stream order"
    );
    // n = 0, 3, 6, 9 in three streams: 12 events delivered three times each.
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM deliveries").await,
        30 + 12 * 2
    );
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM es_dead_letters").await,
        0
    );
    assert_verified(&worker, "effects").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_effect_delivers_again_and_the_effect_stays_once() {
    let db = TestDatabase::create().await;
    effect_tables(&db.pool).await;
    let store = PgEventStore::new(db.pool.clone());
    let mut positions = Vec::new();
    for n in 1..=6 {
        positions.push(append(&store, "a", "Counted", n).await);
    }
    let behaviour = Arc::new(Behaviour::default());
    // The crash: after the effect of the 4th event, before the batch's checkpoint.
    *behaviour.hang_after.lock().unwrap() = Some(positions[3]);
    let mut config = fast_config("doomed");
    config.lease_ttl = Duration::from_millis(600);
    let doomed = worker(&db, &behaviour, ReactorOptions::default(), "doomed").with_config(config);
    let handle = tokio::spawn(async move { doomed.run(std::future::pending()).await });
    behaviour.hung.notified().await;
    handle.abort();
    let _ = handle.await;
    assert_eq!(effects(&db.pool).await.0, 4);
    let checkpoint = scalar(
        &db.pool,
        "SELECT watermark FROM es_projections WHERE name = 'effects'",
    )
    .await;
    assert_eq!(checkpoint, 0, "the batch's checkpoint was never written");
    // A standby takes over when the lease expires and delivers the batch again.
    *behaviour.hang_after.lock().unwrap() = None;
    let mut config = fast_config("standby");
    config.lease_ttl = Duration::from_millis(600);
    let standby = worker(&db, &behaviour, ReactorOptions::default(), "standby").with_config(config);
    let running = spawn(standby.clone());
    wait_caught_up(&db.pool, "effects", Duration::from_secs(30)).await;
    running.stop().await;
    assert_eq!(
        effects(&db.pool).await,
        (6, 0),
        "each effect once, in order"
    );
    let delivered_twice = scalar(
        &db.pool,
        "SELECT count(*) FROM (SELECT event_id FROM deliveries GROUP BY event_id HAVING count(*) = 2) t",
    )
    .await;
    assert_eq!(delivered_twice, 4, "the events before the crash came again");
    assert_verified(&standby, "effects").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_is_parked_its_stream_waits_and_a_retry_applies_it_in_order() {
    let db = TestDatabase::create().await;
    effect_tables(&db.pool).await;
    let store = PgEventStore::new(db.pool.clone());
    for n in 1..=3 {
        append(&store, "a", "Counted", n).await;
    }
    let poison = append(&store, "a", "Poison", 0).await;
    for n in 5..=7 {
        append(&store, "a", "Counted", n).await;
        append(&store, "b", "Counted", n).await;
    }
    let behaviour = Arc::new(Behaviour::default());
    let options = ReactorOptions {
        retry: fast_retries(3),
        ..ReactorOptions::default()
    };
    let worker = worker(&db, &behaviour, options, "reactor");
    let running = spawn(worker.clone());
    wait_caught_up(&db.pool, "effects", Duration::from_secs(30)).await;

    // The other stream went on; a waits behind its letter, with the rest of a held.
    assert_eq!(effects(&db.pool).await, (6, 0));
    let letters = dead_letters::list(&db.pool, Some("effects"), false)
        .await
        .unwrap();
    let summary: Vec<(i64, Cause, i32)> = letters
        .iter()
        .map(|l| (l.event.position.0, l.cause, l.attempts))
        .collect();
    let held: Vec<i64> = letters
        .iter()
        .filter(|l| l.cause == Cause::Held)
        .map(|l| l.event.position.0)
        .collect();
    assert_eq!(summary[0], (poison, Cause::Failed, 3));
    assert_eq!(held.len(), 3);
    assert!(letters[0].error.contains("poison"), "{}", letters[0].error);
    let status = es_projections::status(&db.pool).await.unwrap();
    let row = status
        .projections
        .iter()
        .find(|p| p.name == "effects")
        .unwrap();
    assert_eq!((row.kind.as_str(), row.dead_letters), ("reactor", 4));
    assert_verified(&worker, "effects").await;

    // New events of a wait behind the letter too.
    append(&store, "a", "Counted", 8).await;
    wait_caught_up(&db.pool, "effects", Duration::from_secs(30)).await;
    assert_eq!(effects(&db.pool).await.0, 6);

    // Fixed: a retry, carried out by the running worker, applies a's letters in order.
    behaviour.cured.store(true, Ordering::SeqCst);
    let ids = dead_letters::request(
        &db.pool,
        "effects",
        Action::Retry,
        &Target::Position(es_core::GlobalPosition(poison)),
        "test",
        None,
    )
    .await
    .unwrap();
    assert_eq!(ids.len(), 1, "the letter, with none open before it");
    let deadline = deadline(30);
    while !dead_letters::list(&db.pool, Some("effects"), false)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "letters not retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    // a: 1, 2, 3, the cured poison, 5 to 8; b: 5 to 7.
    assert_eq!(
        effects(&db.pool).await,
        (11, 0),
        "everything once, in order"
    );
    let closed = dead_letters::list(&db.pool, Some("effects"), true)
        .await
        .unwrap();
    assert_eq!(closed.len(), 5);
    assert!(closed.iter().all(|l| l.state == LetterState::Retried
        && l.resolved.as_ref().is_some_and(|(_, by)| by == "reactor")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_on_failure_parks_the_rest_and_the_cli_retry_goes_on_in_order() {
    let db = TestDatabase::create().await;
    effect_tables(&db.pool).await;
    let store = PgEventStore::new(db.pool.clone());
    append(&store, "a", "Counted", 1).await;
    append(&store, "b", "Counted", 1).await;
    let poison = append(&store, "a", "Poison", 0).await;
    append(&store, "a", "Counted", 3).await;
    append(&store, "b", "Counted", 2).await;
    let behaviour = Arc::new(Behaviour::default());
    let options = ReactorOptions {
        retry: fast_retries(2),
        on_failure: OnFailure::Stop,
        ..ReactorOptions::default()
    };
    let worker = worker(&db, &behaviour, options.clone(), "reactor");
    let stopped = worker.run(std::future::pending()).await;
    match stopped {
        Err(ProjectionError::Failed { projection, error }) => {
            assert_eq!(projection, "effects");
            assert!(error.contains(&format!("position {poison}")), "{error}");
        }
        other => panic!("expected the reactor to stop, got {other:?}"),
    }
    assert_eq!(effects(&db.pool).await, (2, 0));
    let letters = dead_letters::list(&db.pool, Some("effects"), false)
        .await
        .unwrap();
    let causes: Vec<(String, Cause)> = letters
        .iter()
        .map(|l| (l.event.stream.to_string(), l.cause))
        .collect();
    assert_eq!(
        causes,
        vec![
            ("a".into(), Cause::Failed),
            ("a".into(), Cause::Held),
            ("b".into(), Cause::Held)
        ]
    );
    let status = es_projections::status(&db.pool).await.unwrap();
    assert_eq!(status.projections[0].state, "failed");

    // No worker runs: the CLI takes the lease and carries the retry out itself.
    behaviour.cured.store(true, Ordering::SeqCst);
    let build = {
        let worker = worker.clone();
        move |_| Ok(worker)
    };
    let url = db.url.clone();
    let code = es_projections::cli::main_from(
        "test-worker",
        [
            "test-worker",
            "--database-url",
            &url,
            "retry",
            "effects",
            "--all",
        ],
        build,
    )
    .await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert_eq!(effects(&db.pool).await, (5, 0), "all applied, in order");
    assert!(dead_letters::list(&db.pool, Some("effects"), false)
        .await
        .unwrap()
        .is_empty());
    let status = es_projections::status(&db.pool).await.unwrap();
    assert_eq!(status.projections[0].state, "running");
    // A worker goes on from the checkpoint.
    append(&store, "b", "Counted", 3).await;
    let running = spawn(worker.clone());
    wait_caught_up(&db.pool, "effects", Duration::from_secs(30)).await;
    running.stop().await;
    assert_eq!(effects(&db.pool).await, (6, 0));
    assert_verified(&worker, "effects").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_keeps_its_reason_and_lets_the_held_events_go_on() {
    let db = TestDatabase::create().await;
    effect_tables(&db.pool).await;
    let store = PgEventStore::new(db.pool.clone());
    let poison = append(&store, "a", "Poison", 0).await;
    append(&store, "a", "Counted", 2).await;
    append(&store, "a", "Counted", 3).await;
    let behaviour = Arc::new(Behaviour::default());
    let options = ReactorOptions {
        retry: fast_retries(1),
        ..ReactorOptions::default()
    };
    let worker = worker(&db, &behaviour, options, "reactor");
    let running = spawn(worker.clone());
    wait_caught_up(&db.pool, "effects", Duration::from_secs(30)).await;
    assert_eq!(effects(&db.pool).await.0, 0);
    let refused = dead_letters::request(
        &db.pool,
        "effects",
        Action::Skip,
        &Target::Position(es_core::GlobalPosition(poison)),
        "test",
        None,
    )
    .await;
    assert!(refused.is_err(), "a skip needs a reason");
    dead_letters::request(
        &db.pool,
        "effects",
        Action::Skip,
        &Target::Position(es_core::GlobalPosition(poison)),
        "test",
        Some("the partner deleted the account"),
    )
    .await
    .unwrap();
    let deadline = deadline(30);
    while effects(&db.pool).await.0 < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "held events not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    let letters = dead_letters::list(&db.pool, Some("effects"), true)
        .await
        .unwrap();
    let states: Vec<LetterState> = letters.iter().map(|l| l.state).collect();
    assert_eq!(
        states,
        vec![
            LetterState::Skipped,
            LetterState::Retried,
            LetterState::Retried
        ]
    );
    assert_eq!(
        letters[0].reason.as_deref(),
        Some("the partner deleted the account")
    );
    assert_eq!(
        effects(&db.pool).await,
        (2, 1),
        "made after the skipped version 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_is_never_rebuilt_and_never_shares_a_projection_checkpoint() {
    let db = TestDatabase::create().await;
    effect_tables(&db.pool).await;
    let behaviour = Arc::new(Behaviour::default());
    let worker = worker(&db, &behaviour, ReactorOptions::default(), "reactor");
    let refused = es_projections::rebuild(
        &worker,
        "effects",
        &es_projections::RebuildOptions::default(),
        |_| {},
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(ProjectionError::NotForKind {
                kind: "reactor",
                ..
            })
        ),
        "{refused:?}"
    );
    let running = spawn(worker.clone());
    wait_caught_up(&db.pool, "effects", Duration::from_secs(30)).await;
    running.stop().await;
    // A projection registered under the reactor's name is refused, not handed its cursor.
    let impostor = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "effects" })
        .unwrap()
        .with_config(fast_config("impostor"));
    let error = impostor.run(std::future::pending()).await.unwrap_err();
    assert!(
        matches!(&error, ProjectionError::KindMismatch { stored, .. } if stored == "reactor"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_starting_while_another_creates_the_checkpoint_row_goes_on() {
    let db = TestDatabase::create().await;
    effect_tables(&db.pool).await;
    let store = PgEventStore::new(db.pool.clone());
    append(&store, "a", "Counted", 1).await;
    // Another process creates the row and has not committed yet.
    let mut other = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO es_projections (name, kind) VALUES ('effects', 'reactor')")
        .execute(&mut *other)
        .await
        .unwrap();
    let behaviour = Arc::new(Behaviour::default());
    let worker = worker(&db, &behaviour, ReactorOptions::default(), "reactor");
    let running = spawn(worker.clone());
    // The worker's insert waits for the other transaction...
    let deadline = deadline(30);
    loop {
        let waiting: i64 = scalar(
            &db.pool,
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await;
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... which commits: the worker's statement cannot see that row in its snapshot, and must
    // still find it.
    other.commit().await.unwrap();
    wait_caught_up(&db.pool, "effects", Duration::from_secs(30)).await;
    assert!(!running.is_finished());
    running.stop().await;
    assert_eq!(effects(&db.pool).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_slower_than_the_lease_keeps_it_and_a_standby_waits() {
    let db = TestDatabase::create().await;
    effect_tables(&db.pool).await;
    let store = PgEventStore::new(db.pool.clone());
    for n in 1..=12 {
        append(&store, "a", "Counted", n).await;
    }
    // 12 reactions of 150 ms in one batch: 1.8 s, three lease lengths.
    let behaviour = Arc::new(Behaviour {
        slow: Duration::from_millis(150),
        ..Behaviour::default()
    });
    let short_lease = |owner: &str| {
        let mut config = fast_config(owner);
        config.lease_ttl = Duration::from_millis(600);
        worker(&db, &behaviour, ReactorOptions::default(), owner).with_config(config)
    };
    let first = spawn(short_lease("first"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let standby = spawn(short_lease("standby"));
    wait_caught_up(&db.pool, "effects", Duration::from_secs(30)).await;
    first.stop().await;
    standby.stop().await;
    assert_eq!(effects(&db.pool).await, (12, 0));
    assert_eq!(
        scalar(&db.pool, "SELECT count(*) FROM deliveries").await,
        12,
        "no event delivered twice: the standby never took the lease mid-batch"
    );
}
