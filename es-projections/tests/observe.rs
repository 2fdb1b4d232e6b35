//! The observer over real HTTP against a real PostgreSQL: `/metrics` follows a worker catching
//! up a log (lag falls to 0, applied counts match the log), and `/health/ready` turns 503
//! naming the projection while its worker is frozen on a lock with events waiting, and 200
//! again once the lock is gone; behind but moving is ready all the way.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use es_core::{EventData, EventStore, ExpectedVersion, StreamId, Upcasters};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::observe::{serve, ObserveConfig, Observer};
use es_projections::{Worker, WorkerConfig};
use http_body_util::BodyExt;
use serde_json::json;

/// GET `path` with a real HTTP/1.1 client (hyper): the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The value of the sample `name{labels}` in a Prometheus text exposition (labels as
/// rendered, e.g. `kind="projection",projection="audit"`), if present.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}

const AUDIT: &str = r#"kind="projection",projection="audit""#;

async fn append(store: &PgEventStore, count: u64, from: u64) {
    for i in from..from + count {
        store
            .append(
                &StreamId::new(format!("o-{}", i % 17)).unwrap(),
                ExpectedVersion::Any,
                vec![EventData::raw("Counted", 1, json!({"n": i}))],
            )
            .await
            .unwrap();
    }
}

fn observed(
    db: &TestDatabase,
    owner: &str,
    stall: Duration,
    batch_size: usize,
) -> (Worker, Observer) {
    let observer = Observer::new(ObserveConfig {
        stall,
        sample_interval: Duration::from_millis(100),
        ..ObserveConfig::default()
    })
    .unwrap();
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(WorkerConfig {
            batch_size,
            ..fast_config(owner)
        })
        .with_observer(&observer);
    (worker, observer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_follow_a_catch_up_and_moving_is_ready() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let appended_before = es_postgres::append_counts();
    append(&store, 4000, 0).await;
    // Small batches make the catch-up take several stall times, and a worker that is behind but
    // moving must stay ready all the way.
    let stall = Duration::from_millis(500);
    let (worker, observer) = observed(&db, "observed", stall, 5);
    let serving = serve("127.0.0.1:0", &observer, &worker, &[]).await.unwrap();
    let addr = serving.local_addr();
    // Before the worker runs: the whole log is lag.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if sample(&text, "es_log_head_position", "") == Some(4000.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "no sample of the head:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The projection's row does not exist before its worker starts: no lag sample yet.
    assert_eq!(sample(&first, "es_projection_lag_events", AUDIT), None);
    let appended = es_postgres::append_counts();
    assert!(
        sample(&first, "es_append_events_total", "").unwrap()
            >= (appended.events - appended_before.events) as f64
    );

    let running = spawn(worker.clone());
    let started = Instant::now();
    let mut lags = Vec::new();
    let mut not_ready = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (_, text) = get(addr, "/metrics").await;
        let (ready, body) = get(addr, "/health/ready").await;
        if ready != 200 {
            not_ready.push(body);
        }
        if let Some(lag) = sample(&text, "es_projection_lag_events", AUDIT) {
            lags.push(lag);
            if lag == 0.0
                && sample(&text, "es_projection_events_applied_total", AUDIT) == Some(4000.0)
            {
                break text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "never caught up; lags {lags:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        started.elapsed() > stall * 2,
        "the catch-up took {:?}, too short to tell moving from stalled",
        started.elapsed()
    );
    // Seen behind, then falling to 0, never rising (nothing was appended meanwhile).
    assert!(
        lags.iter().any(|&l| l > 0.0),
        "lag never seen above 0: {lags:?}"
    );
    assert!(lags.windows(2).all(|w| w[1] <= w[0]), "lag rose: {lags:?}");
    // Catching up is not a stall (the first probe may come before any sample).
    assert!(
        not_ready.iter().all(|b| b.contains("no status sample yet")),
        "not ready while catching up: {not_ready:?}"
    );
    assert_eq!(sample(&text, "es_projection_lag_seconds", AUDIT), Some(0.0));
    assert_eq!(
        sample(&text, "es_projection_cursor_position", AUDIT),
        Some(4000.0)
    );
    assert_eq!(sample(&text, "es_projection_lease_held", AUDIT), Some(1.0));
    assert_eq!(sample(&text, "es_projection_stalled", AUDIT), Some(0.0));
    assert_eq!(sample(&text, "es_projection_failed", AUDIT), Some(0.0));
    assert_eq!(
        sample(&text, "es_projection_dead_letters_open", AUDIT),
        Some(0.0)
    );
    // 4000 events in batches of at most 5: at least 800 batches timed.
    let batches = sample(&text, "es_projection_batch_duration_seconds_count", AUDIT).unwrap();
    assert!(batches >= 800.0, "{batches} batches\n{text}");
    // The applied counter equals what the read model holds.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_applied")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 4000);
    assert_eq!(
        get(addr, "/health/ready").await,
        (200, "ready\n".to_string())
    );
    assert_eq!(get(addr, "/health/live").await.0, 200);

    // Appends while it runs: followed to the new head.
    append(&store, 200, 4000).await;
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = get(addr, "/metrics").await;
        if sample(&text, "es_projection_events_applied_total", AUDIT) == Some(4200.0)
            && sample(&text, "es_projection_lag_events", AUDIT) == Some(0.0)
            && sample(&text, "es_log_head_position", "") == Some(4200.0)
        {
            let appended = es_postgres::append_counts();
            assert!(
                sample(&text, "es_append_events_total", "").unwrap()
                    >= (appended.events - appended_before.events) as f64
            );
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    serving.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_worker_is_not_ready_until_it_moves_again() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let stall = Duration::from_secs(1);
    let (worker, observer) = observed(&db, "frozen", stall, 100);
    let serving = serve("127.0.0.1:0", &observer, &worker, &[]).await.unwrap();
    let addr = serving.local_addr();
    let running = spawn(worker.clone());
    append(&store, 20, 0).await;
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    let ready = async || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = get(addr, "/health/ready").await;
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "never ready: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    ready().await;

    // Another session locks the projection's table: the worker's next batch waits on it,
    // holding its lease and transaction, while the log head moves on.
    let generation: i32 = sqlx::query_scalar(
        "SELECT generation FROM es_projections WHERE name = 'audit' AND role = 'live'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query(&format!(
        "LOCK TABLE audit_applied_g{generation} IN ACCESS EXCLUSIVE MODE"
    ))
    .execute(&mut *locker)
    .await
    .unwrap();
    let frozen_at = Instant::now();
    append(&store, 5, 20).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = get(addr, "/health/ready").await;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "never turned 503 while frozen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Not at once: only once the checkpoint stood still for the stall time, counted from the
    // last sample that saw it caught up, which may come up to one sample interval (100 ms)
    // before the lock was taken.
    assert!(
        frozen_at.elapsed() + Duration::from_millis(100) >= stall,
        "503 after {:?}",
        frozen_at.elapsed()
    );
    assert!(
        body.contains("audit: checkpoint at 20 has not moved") && body.contains("5 events wait"),
        "{body}"
    );
    // The gauge follows at the next sample.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (_, text) = get(addr, "/metrics").await;
        if sample(&text, "es_projection_stalled", AUDIT) == Some(1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sample(&text, "es_projection_lag_events", AUDIT),
        Some(5.0),
        "{text}"
    );
    let (_, json) = get(addr, "/status.json").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["ready"], false);
    assert!(json["projections"][0]["not_ready"]
        .as_str()
        .is_some_and(|r| r.starts_with("audit:")));

    // The lock goes: the batch goes through, the checkpoint moves, ready again.
    locker.rollback().await.unwrap();
    ready().await;
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    assert_matches_log(&db.pool, "audit_applied", "audit_streams").await;
    running.stop().await;
    serving.stop().await;
}
