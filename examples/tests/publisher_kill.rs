//! The publisher of `deal-worker` (`deal_publisher`, registered when `NATS_URL` is set)
//! SIGKILLed 30 times at random moments while the test appends deal events, the broker killed
//! and restarted meanwhile: afterwards JetStream holds every event of the log exactly once
//! (counted by `Nats-Msg-Id`, the event id), each stream in version order, `Configured` in its
//! current schema (legacy v1 events upcast on the way out).
//!
//! Each kill is a crash at any instant: before a batch is sent, with acknowledgements in
//! flight, or after the broker stored a batch and before the checkpoint (the next process
//! publishes that batch again and JetStream drops it by message id). The moments come from a
//! seed printed at the start, so that a failure can be replayed (`PUBLISHER_KILL_SEED`).

#![allow(clippy::unwrap_used)]

#[path = "../../es-projections/tests/common/nats.rs"]
mod nats_common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::{EventData, EventStore, ExpectedVersion, GlobalPosition, Metadata, StreamId};
use es_examples::deal::{configured_v1_payload, deal_stream, DealEvent};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use nats_common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Map};
use sqlx::PgPool;

/// The publisher's name in `deal-worker`, and what it publishes to (the defaults of
/// `JetStreamOptions`).
const PUBLISHER: &str = "deal_publisher";
const JETSTREAM_STREAM: &str = "ES_EVENTS";
const SUBJECT_PREFIX: &str = "es";

fn start_publisher(database_url: &str, nats_url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_deal-worker"))
        .args([
            "run",
            "--projection",
            PUBLISHER,
            "--batch-size",
            "50",
            "--lease-ms",
            "400",
            "--poll-ms",
            "20",
        ])
        .env("DATABASE_URL", database_url)
        .env("NATS_URL", nats_url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Appends deal events until `stop`: each writer its own deals, `Created` first, then
/// `Configured` (every fifth one a legacy v1 event), in appends of 1 to 3 events.
async fn write_deals(pool: PgPool, writer: u64, stop: Arc<AtomicBool>) -> u64 {
    let store = PgEventStore::new(pool);
    let mut rng = StdRng::seed_from_u64(writer);
    let mut created = std::collections::HashSet::new();
    let mut appended = 0;
    while !stop.load(Ordering::Relaxed) {
        let deal = writer * 1_000 + rng.gen_range(0..12);
        let stream = StreamId::new(deal_stream(deal)).unwrap();
        let mut events = Vec::new();
        if created.insert(deal) {
            events.push(EventData::from_event(&DealEvent::Created, Metadata::default()).unwrap());
        }
        for _ in 0..rng.gen_range(1..=3) {
            appended += 1;
            let value = json!(appended);
            events.push(if appended % 5 == 0 {
                EventData::raw(
                    "Configured",
                    1,
                    configured_v1_payload("gasConsumption", &value),
                )
            } else {
                let mut fields = Map::new();
                fields.insert("heatPumpInstallationType".into(), value);
                EventData::from_event(&DealEvent::Configured { fields }, Metadata::default())
                    .unwrap()
            });
        }
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    appended
}

async fn head(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM es_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The publisher's checkpoint watermark (0 before its first batch) and its lease holder.
async fn checkpoint(pool: &PgPool) -> (i64, Option<String>) {
    sqlx::query_as::<_, (i64, Option<String>)>(
        "SELECT watermark, CASE WHEN lease_expires_at > now() THEN owner END
         FROM es_projections WHERE name = $1 AND role = 'live'",
    )
    .bind(PUBLISHER)
    .fetch_optional(pool)
    .await
    .unwrap()
    .unwrap_or((0, None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_killed_30_times_while_the_broker_restarts_publishes_each_event_once_in_order()
{
    let started = Instant::now();
    let seed = std::env::var("PUBLISHER_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("publisher_kill: seed {seed} (set PUBLISHER_KILL_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDatabase::with_max_connections(10).await;
    let mut broker = NatsServer::start();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(write_deals(db.pool.clone(), w, stop.clone())))
        .collect();

    let (mut holding_at_kill, mut behind_at_kill, mut broker_restarts) = (0, 0, 0);
    for round in 0..30 {
        let mut publisher = start_publisher(&db.url, &broker.url());
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..900))).await;
        if round % 8 == 4 {
            // The broker dies under a running publisher, which retries until it is back.
            tokio::task::block_in_place(|| broker.kill());
            tokio::time::sleep(Duration::from_millis(rng.gen_range(100..500))).await;
            tokio::task::block_in_place(|| broker.restart());
            broker_restarts += 1;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
        }
        assert!(
            publisher.try_wait().unwrap().is_none(),
            "publisher {round} stopped by itself (see its log above)"
        );
        let (watermark, holder) = checkpoint(&db.pool).await;
        if holder.is_some_and(|h| h.contains(&format!(":{}:", publisher.id()))) {
            holding_at_kill += 1;
            if watermark < head(&db.pool).await {
                behind_at_kill += 1;
            }
        }
        publisher.kill().unwrap();
        publisher.wait().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }

    // One last publisher finishes the log.
    let mut publisher = start_publisher(&db.url, &broker.url());
    let last = GlobalPosition(head(&db.pool).await);
    es_projections::wait_for(&db.pool, PUBLISHER, last, Duration::from_secs(60))
        .await
        .unwrap();
    publisher.kill().unwrap();
    publisher.wait().unwrap();

    let log = log_of(&db.pool).await;
    let stored = read_back(&broker.url(), JETSTREAM_STREAM).await;
    assert_published_once_in_order(&stored, &log, SUBJECT_PREFIX);
    assert!(
        stored
            .iter()
            .all(|m| m.event_type != "Configured" || m.schema_version == 2),
        "legacy Configured v1 events are published upcast to v2"
    );
    assert_eq!(broker_restarts, 4);
    assert!(
        holding_at_kill >= 10 && behind_at_kill >= 5,
        "kills hit the lease holder ({holding_at_kill} of 30) with events to publish ({behind_at_kill})"
    );
    eprintln!(
        "publisher_kill: {} events, 30 kills ({holding_at_kill} of the lease holder, {behind_at_kill} of them behind the head), {broker_restarts} broker restarts, {:.1?}",
        log.len(),
        started.elapsed()
    );
}
