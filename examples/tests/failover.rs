//! Two `deal-worker` processes on one projection: only the lease holder applies; when it is
//! killed, the standby takes over and finishes. The checkpoint row counts every applied event,
//! and is written only under a valid lease, so `events_applied == events in the log` proves that
//! no batch was applied twice.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use es_examples::deal::{load, LoadOptions};
use es_postgres::testing::TestDatabase;

fn start_worker(url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_deal-worker"))
        .args([
            "run",
            "--batch-size",
            "50",
            "--lease-ms",
            "1500",
            "--poll-ms",
            "50",
        ])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn lease_and_applied(db: &TestDatabase) -> (Option<String>, i64) {
    sqlx::query_as(
        "SELECT CASE WHEN lease_expires_at > now() THEN owner END, events_applied
         FROM es_projections WHERE name = 'deals' AND role = 'live'",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap()
    .unwrap_or((None, 0))
}

async fn wait_until(what: &str, seconds: u64, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_process_takes_over_when_the_holder_dies() {
    let db = TestDatabase::with_max_connections(10).await;
    let options = LoadOptions {
        deals: 200,
        events: 20_000,
        concurrency: 4,
        append_batch: 500,
    };
    load(&db.pool, &options, |_| {}).await.unwrap();

    let mut first = start_worker(&db.url);
    let first_pid = format!(":{}:", first.id());
    wait_until("the first worker to apply", 60, async || {
        let (owner, applied) = lease_and_applied(&db).await;
        owner.is_some_and(|o| o.contains(&first_pid)) && applied > 500
    })
    .await;

    let mut second = start_worker(&db.url);
    let second_pid = format!(":{}:", second.id());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (owner, _) = lease_and_applied(&db).await;
    assert!(
        owner.unwrap().contains(&first_pid),
        "the standby must not take a held lease"
    );

    first.kill().unwrap();
    first.wait().unwrap();
    // Events written after the holder died can only be applied by the standby.
    let more = LoadOptions {
        events: 25_000,
        ..options
    };
    load(&db.pool, &more, |_| {}).await.unwrap();
    wait_until("the standby to take over and finish", 120, async || {
        let (owner, applied) = lease_and_applied(&db).await;
        owner.is_some_and(|o| o.contains(&second_pid)) && applied >= 25_000
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();

    let (_, applied) = lease_and_applied(&db).await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        applied, events,
        "every event applied exactly once across both processes"
    );
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT stream_id, max(stream_version) AS v FROM es_events GROUP BY stream_id) e
         FULL JOIN deals d ON d.deal_id = e.stream_id
         WHERE d.stream_version IS DISTINCT FROM e.v",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(wrong, 0, "every deal reflects its last event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_and_releases_the_lease() {
    let db = TestDatabase::with_max_connections(10).await;
    let options = LoadOptions {
        deals: 50,
        events: 5_000,
        concurrency: 2,
        append_batch: 500,
    };
    load(&db.pool, &options, |_| {}).await.unwrap();
    let mut worker = start_worker(&db.url);
    let pid = format!(":{}:", worker.id());
    wait_until("the worker to apply", 60, async || {
        let (owner, applied) = lease_and_applied(&db).await;
        owner.is_some_and(|o| o.contains(&pid)) && applied > 0
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = worker.wait().unwrap();
    assert!(exit.success(), "a clean shutdown exits 0, got {exit:?}");
    let (owner, applied) = lease_and_applied(&db).await;
    assert_eq!(owner, None, "the lease is released for a standby");
    // Whatever was applied is consistent with the checkpoint: deals never run ahead of it.
    let ahead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deals d WHERE d.stream_version > (SELECT max(stream_version) FROM es_events e
           WHERE e.stream_id = d.deal_id AND e.global_position <= (SELECT watermark FROM es_projections WHERE name = 'deals'))",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(ahead, 0);
    assert!(applied > 0);
}
