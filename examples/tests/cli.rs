//! The worker binary as an operator uses it: `verify` exits 0 on a sound projection and 1, naming
//! the event, when one was never delivered; Ctrl-C on `rebuild`, then the same command, resumes
//! at once.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use es_examples::deal::{load, LoadOptions};
use es_postgres::testing::TestDatabase;

fn deal_worker(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deal-worker"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_exits_non_zero_naming_a_skipped_event() {
    let db = TestDatabase::with_max_connections(10).await;
    let options = LoadOptions {
        deals: 50,
        events: 2_000,
        concurrency: 2,
        append_batch: 100,
    };
    load(&db.pool, &options, |_| {}).await.unwrap();
    let rebuilt = deal_worker(&db.url, &["rebuild", "deals"]);
    assert!(rebuilt.status.success(), "{}", text(&rebuilt));
    let verified = deal_worker(&db.url, &["verify"]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).contains("ok, 2000 events delivered"),
        "{}",
        text(&verified)
    );
    let status = deal_worker(&db.url, &["status"]);
    assert!(text(&status).contains("VERIFIED"), "{}", text(&status));

    // Plant a loss: the ledger forgets that one position was delivered, as if it never was.
    let (first, last): (i64, i64) = sqlx::query_as(
        "SELECT first_position, last_position FROM es_applied_ranges
         WHERE last_position - first_position >= 2 ORDER BY first_position LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let lost = first + 1;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("UPDATE es_applied_ranges SET last_position = $2 WHERE first_position = $1")
        .bind(first)
        .bind(lost - 1)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO es_applied_ranges (projection, generation, first_position, last_position)
         VALUES ('deals', 1, $1, $2)",
    )
    .bind(lost + 1)
    .bind(last)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let failed = deal_worker(&db.url, &["verify", "deals"]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let report = text(&failed);
    assert!(
        report.contains("1 committed events never delivered")
            && report.contains(&format!("position {lost}")),
        "{report}"
    );
    assert!(
        !report.contains("PgDatabaseError"),
        "no Debug dumps: {report}"
    );
    let status = deal_worker(&db.url, &["status"]);
    assert!(text(&status).contains("FAILED"), "{}", text(&status));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_a_rebuild_then_the_same_command_resumes() {
    let db = TestDatabase::with_max_connections(10).await;
    let options = LoadOptions {
        deals: 200,
        events: 30_000,
        concurrency: 2,
        append_batch: 500,
    };
    load(&db.pool, &options, |_| {}).await.unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_deal-worker"))
        .args(["rebuild", "deals", "--batch-size", "100"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let watermark: Option<i64> = sqlx::query_scalar(
            "SELECT watermark FROM es_projections WHERE name = 'deals' AND state = 'rebuilding'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if watermark.is_some_and(|w| w > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the rebuild never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signal = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    let interrupted = child.wait_with_output().unwrap();
    assert!(interrupted.status.success(), "{}", text(&interrupted));
    assert!(
        text(&interrupted).contains("run the same command again to resume"),
        "{}",
        text(&interrupted)
    );
    let resumed = deal_worker(&db.url, &["rebuild", "deals", "--batch-size", "100"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains("resumed"), "{}", text(&resumed));
    let verified = deal_worker(&db.url, &["verify"]);
    assert!(verified.status.success(), "{}", text(&verified));
}
