//! Publishing to NATS JetStream against a real PostgreSQL and a real nats-server: a worker's
//! publisher puts every event of a log written by concurrent writers into JetStream exactly
//! once (counted by `Nats-Msg-Id`), each stream in version order, upcast; also while the
//! broker is killed and restarted twice mid-flow. The broker drops a repeated publication by
//! message id; a message the broker cannot take is a permanent error; stream ids with
//! characters subjects forbid make valid subjects that map back to the stream.
//!
//! Tests that restart the broker start a nats-server of their own; the others share
//! `$NATS_URL` (scripts/test starts one), each with a JetStream stream and subject prefix of
//! its own.

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/nats.rs"]
mod nats_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use common::*;
use es_core::{
    DomainEvent, EventData, EventStore, ExpectedVersion, GlobalPosition, Metadata, RecordedEvent,
    StreamId, StreamVersion, Upcasters,
};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::nats::{JetStreamOptions, JetStreamSink};
use es_projections::publisher::{Publisher, Sink, SinkError};
use es_projections::Worker;
use nats_common::*;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;

/// Streams the writers append to: ordinary ids and ids with characters NATS subjects forbid.
const STREAMS: &[&str] = &[
    "deal-1", "deal-2", "deal-3", "deal-4", "deal-5", "user-1", "user-2", "odd.id", "x *>", "-lead",
];

/// `TestEvent`'s `Counted` one schema version on: v1 payloads are upcast on the way out.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum CountedV2 {
    Counted { n: i64, doubled: i64 },
}

impl DomainEvent for CountedV2 {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Counted", 2)];
}

fn v2_registry() -> Upcasters {
    Upcasters::builder()
        .register::<CountedV2>()
        .step("Counted", 1, |mut payload| {
            let n = payload["n"].as_i64().ok_or("no n")?;
            payload["doubled"] = json!(n * 2);
            Ok(payload)
        })
        .build()
        .unwrap()
}

/// `writers` tasks, each making `appends` appends of 1 to 4 events to random streams of
/// `STREAMS`, all at once. Events are `Counted` v1, and every seventh append is of a type no
/// registry knows (`Foreign`, published as stored); one writer's events carry a correlation id.
async fn write_concurrently(pool: &PgPool, writers: u64, appends: u64, pause: Duration) {
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let store = PgEventStore::new(pool.clone());
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(writer);
            for i in 0..appends {
                let stream = StreamId::new(STREAMS[rng.gen_range(0..STREAMS.len())]).unwrap();
                let count = rng.gen_range(1..=4);
                let events = (0..count)
                    .map(|k| {
                        let n = (writer * 10_000 + i * 10 + k) as i64;
                        let mut event = if i % 7 == 3 {
                            EventData::raw("Foreign", 3, json!({"n": n}))
                        } else {
                            EventData::raw("Counted", 1, json!({"n": n}))
                        };
                        if writer == 0 {
                            event.metadata =
                                Metadata::correlated(uuid::Uuid::from_u128(u128::from(i) + 1));
                        }
                        event
                    })
                    .collect();
                store
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

fn publishing_worker<S: Sink>(pool: &PgPool, upcasters: Upcasters, sink: S, owner: &str) -> Worker {
    let publisher = Publisher::new("feed", sink).unwrap();
    Worker::new(pool.clone(), upcasters)
        .publisher(publisher)
        .unwrap()
        .with_config(fast_config(owner))
}

/// A sink that counts the batches its inner sink failed, transiently or not.
struct Counting<S> {
    inner: S,
    failed: Arc<AtomicUsize>,
}

#[async_trait]
impl<S: Sink> Sink for Counting<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), SinkError> {
        let result = self.inner.publish(events).await;
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_publishes_every_event_once_in_stream_order_upcast() {
    let db = TestDatabase::with_max_connections(20).await;
    let broker = shared_broker();
    let options = unique_options();
    let sink = JetStreamSink::connect(&broker.url, options.clone())
        .await
        .unwrap();
    assert!(sink.describe().contains(&options.stream));
    let running = spawn(publishing_worker(
        &db.pool,
        v2_registry(),
        sink,
        "publisher-a",
    ));
    write_concurrently(&db.pool, 6, 60, Duration::ZERO).await;
    wait_caught_up(&db.pool, "feed", Duration::from_secs(60)).await;
    running.stop().await;

    let log = log_of(&db.pool).await;
    let stored = read_back(&broker.url, &options.stream).await;
    assert!(log.len() > 600, "a log of {} events", log.len());
    assert_published_once_in_order(&stored, &log, &options.subject_prefix);

    // Known types in their current shape, unknown ones as stored; the envelope in headers.
    let payloads: std::collections::HashMap<uuid::Uuid, serde_json::Value> =
        sqlx::query_as::<_, (uuid::Uuid, serde_json::Value)>(
            "SELECT event_id, payload FROM es_events",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut correlated = 0;
    for message in &stored {
        let stored_payload = &payloads[&message.msg_id.parse::<uuid::Uuid>().unwrap()];
        let n = stored_payload["n"].as_i64().unwrap();
        match message.event_type.as_str() {
            "Counted" => {
                assert_eq!(message.schema_version, 2);
                assert_eq!(message.payload, json!({"n": n, "doubled": n * 2}));
            }
            "Foreign" => {
                assert_eq!(message.schema_version, 3);
                assert_eq!(&message.payload, stored_payload);
            }
            other => panic!("unexpected event type {other}"),
        }
        let recorded_at = &message.headers["es-recorded-at"];
        assert!(
            chrono::DateTime::parse_from_rfc3339(recorded_at).is_ok(),
            "{recorded_at}"
        );
        if message.headers.contains_key("es-correlation-id") {
            correlated += 1;
        }
        assert!(!message.headers.contains_key("es-causation-id"));
    }
    assert!(correlated > 0, "correlation ids are published when present");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_broker_killed_and_restarted_twice_mid_flow_loses_and_doubles_nothing() {
    // The worker's retries are logged as warnings: shown when the test fails (or --nocapture).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("es_projections=warn")
        .with_test_writer()
        .try_init();
    let db = TestDatabase::with_max_connections(20).await;
    let mut broker = NatsServer::start();
    let options = JetStreamOptions {
        ack_timeout: Duration::from_millis(400),
        ..unique_options()
    };
    let failed = Arc::new(AtomicUsize::new(0));
    let sink = Counting {
        inner: JetStreamSink::connect(&broker.url(), options.clone())
            .await
            .unwrap(),
        failed: failed.clone(),
    };
    let running = spawn(publishing_worker(
        &db.pool,
        Upcasters::of::<TestEvent>(),
        sink,
        "publisher-b",
    ));
    let pool = db.pool.clone();
    let writing = tokio::spawn(async move {
        write_concurrently(&pool, 4, 130, Duration::from_millis(30)).await;
    });
    let mut behind_at_kill = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let head: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        tokio::task::block_in_place(|| broker.kill());
        behind_at_kill.push(head);
        // Writers go on while the broker is down, longer than an acknowledgement may take:
        // batches in flight fail, and the worker retries them from the checkpoint.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        tokio::task::block_in_place(|| broker.restart());
    }
    writing.await.unwrap();
    wait_caught_up(&db.pool, "feed", Duration::from_secs(60)).await;
    running.stop().await;

    let log = log_of(&db.pool).await;
    assert!(
        behind_at_kill
            .iter()
            .all(|&head| head > 0 && head < log.len() as i64),
        "both restarts happened while events flowed ({behind_at_kill:?} of {})",
        log.len()
    );
    assert!(
        failed.load(Ordering::Relaxed) > 0,
        "publishing failed while the broker was down"
    );
    let stored = read_back(&broker.url(), &options.stream).await;
    assert_published_once_in_order(&stored, &log, &options.subject_prefix);
}

fn recorded(stream: &str, version: u64, position: i64) -> RecordedEvent {
    RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        stream_id: StreamId::new(stream).unwrap(),
        stream_version: StreamVersion(version),
        global_position: GlobalPosition(position),
        event_type: "Counted".into(),
        schema_version: 1,
        payload: json!({"n": position}).into(),
        metadata: Metadata::default(),
        recorded_at: Utc::now(),
    }
}

#[tokio::test]
async fn publishing_the_same_events_again_is_dropped_by_message_id() {
    let broker = shared_broker();
    let options = unique_options();
    let sink = JetStreamSink::connect(&broker.url, options.clone())
        .await
        .unwrap();
    let events: Vec<RecordedEvent> = (1..=30)
        .map(|i| recorded(&format!("deal-{}", i % 4), (i / 4 + 1) as u64, i))
        .collect();
    sink.publish(&events).await.unwrap();
    // A crash before the checkpoint: the batch again, and an overlapping, longer one.
    sink.publish(&events).await.unwrap();
    sink.publish(&events[10..]).await.unwrap();
    // A second connection (a restarted process) is deduplicated the same way.
    let other = JetStreamSink::connect(&broker.url, options.clone())
        .await
        .unwrap();
    other.publish(&events).await.unwrap();
    let stored = read_back(&broker.url, &options.stream).await;
    assert_eq!(stored.len(), events.len());
    let in_order: Vec<String> = stored.iter().map(|m| m.msg_id.clone()).collect();
    let expected: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(
        in_order, expected,
        "stored once, in the order first published"
    );
}

#[tokio::test]
async fn subjects_escape_stream_ids_and_map_back_through_the_broker() {
    let broker = shared_broker();
    let options = unique_options();
    let sink = JetStreamSink::connect(&broker.url, options.clone())
        .await
        .unwrap();
    let odd = [
        "deal-42",
        "a.b",
        "*",
        ">",
        "x y",
        "%",
        "-lead",
        "tenant:acme/deal-1",
        "日本-語",
        "a..b",
    ];
    let events: Vec<RecordedEvent> = odd
        .iter()
        .enumerate()
        .map(|(i, stream)| recorded(stream, 1, i as i64 + 1))
        .collect();
    sink.publish(&events).await.unwrap();
    let stored = read_back(&broker.url, &options.stream).await;
    assert_eq!(stored.len(), odd.len());
    let prefix = &options.subject_prefix;
    for (message, stream) in stored.iter().zip(odd) {
        let id = StreamId::new(stream).unwrap();
        assert_eq!(message.stream, stream);
        assert_eq!(message.subject, sink.subject(&id));
        assert_eq!(
            es_projections::nats::stream_of_subject(prefix, &message.subject),
            Some(id)
        );
        assert_eq!(
            message.subject.split('.').count(),
            prefix.split('.').count() + 2
        );
    }
    assert_eq!(stored[0].subject, format!("{prefix}.deal.deal-42"));
    assert_eq!(stored[1].subject, format!("{prefix}.a%2Eb.a%2Eb"));
}

#[tokio::test]
async fn a_message_the_broker_cannot_take_is_a_permanent_error() {
    let broker = shared_broker();
    let options = unique_options();
    let sink = JetStreamSink::connect(&broker.url, options.clone())
        .await
        .unwrap();
    let mut huge = recorded("deal-1", 1, 1);
    huge.payload = json!({"blob": "x".repeat(2 * 1024 * 1024)}).into();
    let error = sink.publish(&[huge]).await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("max_payload"), "{error}");

    let mut broken = recorded("deal-1", 1, 1);
    broken.event_type = "Line\nBreak".into();
    let error = sink.publish(&[broken]).await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
}

#[tokio::test]
async fn an_unreachable_broker_is_transient_and_named_without_credentials() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://alice:s3cret@127.0.0.1:{port}");
    let options = JetStreamOptions {
        connect_timeout: Duration::from_millis(500),
        ..JetStreamOptions::default()
    };
    let error = JetStreamSink::connect(&url, options).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("cannot connect to NATS at 127.0.0.1:{port}: ")),
        "{text}"
    );
    assert!(
        !text.contains("s3cret") && !text.contains("alice"),
        "{text}"
    );
}

#[tokio::test]
async fn an_existing_stream_gains_the_subjects_and_window_and_keeps_its_other_settings() {
    use es_projections::nats::async_nats::jetstream::{self, stream};
    let broker = shared_broker();
    let options = JetStreamOptions {
        duplicate_window: Duration::from_secs(45),
        ..unique_options()
    };
    let js = jetstream::new(
        es_projections::nats::async_nats::connect(&broker.url)
            .await
            .unwrap(),
    );
    let other_subjects = format!("keep{}.>", options.subject_prefix);
    js.create_stream(stream::Config {
        name: options.stream.clone(),
        subjects: vec![other_subjects.clone()],
        max_messages: 1234,
        duplicate_window: Duration::from_secs(10),
        ..stream::Config::default()
    })
    .await
    .unwrap();
    let sink = JetStreamSink::connect(&broker.url, options.clone())
        .await
        .unwrap();
    sink.publish(&[recorded("deal-1", 1, 1)]).await.unwrap();
    let mut existing = js.get_stream(&options.stream).await.unwrap();
    let config = existing.info().await.unwrap().config.clone();
    assert_eq!(
        config.subjects,
        vec![other_subjects, format!("{}.>", options.subject_prefix)]
    );
    assert_eq!(config.duplicate_window, Duration::from_secs(45));
    assert_eq!(config.max_messages, 1234, "the operator's limit is kept");
    assert_eq!(existing.info().await.unwrap().state.messages, 1);

    // A stream in memory would lose acknowledged events on a restart: refused.
    let memory = unique_options();
    js.create_stream(stream::Config {
        name: memory.stream.clone(),
        subjects: vec![format!("{}.>", memory.subject_prefix)],
        storage: stream::StorageType::Memory,
        ..stream::Config::default()
    })
    .await
    .unwrap();
    let error = JetStreamSink::connect(&broker.url, memory)
        .await
        .unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("in memory"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_stops_the_publisher_and_shows_in_status() {
    let db = TestDatabase::with_max_connections(10).await;
    let broker = shared_broker();
    let options = unique_options();
    let sink = JetStreamSink::connect(&broker.url, options.clone())
        .await
        .unwrap();
    let store = PgEventStore::new(db.pool.clone());
    store
        .append(
            &StreamId::new("deal-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![EventData::raw("Counted", 1, json!({"n": 1}))],
        )
        .await
        .unwrap();
    // Within the store's limit (1 MiB) but, with its headers, over NATS's default max_payload
    // (1 MB); written raw, as another tool with a higher limit might.
    let blob = "x".repeat(1024 * 1024 - 100);
    let mut conn = db.pool.acquire().await.unwrap();
    insert_raw(
        &mut conn,
        "deal-1",
        2,
        "Counted",
        json!({"n": 2, "blob": blob}),
    )
    .await;
    drop(conn);

    let worker = publishing_worker(&db.pool, Upcasters::of::<TestEvent>(), sink, "publisher-p");
    let stopped = tokio::time::timeout(
        Duration::from_secs(30),
        worker.run(std::future::pending::<()>()),
    )
    .await
    .expect("the publisher stops by itself");
    let error = stopped.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    let (state, last_error): (String, String) = sqlx::query_as(
        "SELECT state, last_error FROM es_projections WHERE name = 'feed' AND role = 'live'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(state, "failed");
    assert!(last_error.contains("max_payload"), "{last_error}");
    assert!(last_error.contains("deal-1 version 2"), "{last_error}");
    let stored = read_back(&broker.url, &options.stream).await;
    assert_eq!(stored.len(), 1, "the events before it are published");
}
