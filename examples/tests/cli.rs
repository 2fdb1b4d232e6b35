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

/// The dead-letter commands and the reactor as an operator meets them: a wire whose refund is
/// refused ends in the dead letters; `dead-letters` lists it, `retry` fails again while the cause
/// stays, `skip` needs a reason and closes it; `rebuild` of a reactor is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_retried_and_skipped_through_the_binary() {
    use es_core::{EventData, EventStore, ExpectedVersion, StreamId};
    let db = TestDatabase::with_max_connections(10).await;
    let store = es_postgres::PgEventStore::new(db.pool.clone());
    // A wire already refused by its credit, whose debited account was never opened: the
    // refund (a deposit to it) is refused, a permanent failure.
    let wire = StreamId::new("wire-cli-1").unwrap();
    let events = vec![
        EventData::raw(
            "WireRequested",
            1,
            serde_json::json!({"from": "account-gone", "to": "account-other", "amount": 5}),
        ),
        EventData::raw("WireDebited", 1, serde_json::json!(null)),
        EventData::raw(
            "WireCreditRefused",
            1,
            serde_json::json!({"reason": "the account is not open"}),
        ),
    ];
    let appended = store
        .append(&wire, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let parked_at = appended.global_position.0;
    let refused = deal_worker(&db.url, &["rebuild", "wires"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("wires is a reactor"),
        "{}",
        text(&refused)
    );
    // Run the worker until the letter is parked.
    let mut run = Command::new(env!("CARGO_BIN_EXE_deal-worker"))
        .args(["run", "--projection", "wires", "--poll-ms", "20"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = deal_worker(&db.url, &["dead-letters", "wires"]);
        if text(&listed).contains("wire-cli-1") {
            assert!(text(&listed).contains("refund"), "{}", text(&listed));
            assert!(text(&listed).contains("failed"), "{}", text(&listed));
            break;
        }
        assert!(Instant::now() < deadline, "never parked: {}", text(&listed));
        std::thread::sleep(Duration::from_millis(100));
    }
    let position = parked_at.to_string();
    // The running worker carries the retry out; the cause stays, so it fails again.
    let retried = deal_worker(&db.url, &["retry", "wires", "--position", &position]);
    assert!(!retried.status.success(), "{}", text(&retried));
    assert!(text(&retried).contains("still open"), "{}", text(&retried));
    let no_reason = Command::new(env!("CARGO_BIN_EXE_deal-worker"))
        .args(["skip", "wires", "--position", &position])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!no_reason.status.success(), "a skip needs --reason");
    let skipped = deal_worker(
        &db.url,
        &[
            "skip",
            "wires",
            "--position",
            &position,
            "--reason",
            "the account was closed for good",
        ],
    );
    assert!(skipped.status.success(), "{}", text(&skipped));
    let _ = run.kill();
    let _ = run.wait();
    let all = deal_worker(&db.url, &["dead-letters", "wires", "--all"]);
    assert!(
        text(&all).contains("skipped: the account was closed for good"),
        "{}",
        text(&all)
    );
    let open = deal_worker(&db.url, &["dead-letters"]);
    assert!(text(&open).contains("no dead letters"), "{}", text(&open));
}

/// What the binaries print for people: `--help` never shows the database password, a zero poll
/// interval is refused by name, and an error is a sentence with its causes, not a Debug dump.
#[test]
fn binaries_print_for_people_and_never_a_secret() {
    let secret_url = "postgres://app:s3cret-pw@127.0.0.1:1/app";
    for binary in [
        env!("CARGO_BIN_EXE_deal-worker"),
        env!("CARGO_BIN_EXE_deal-load"),
        env!("CARGO_BIN_EXE_demo"),
    ] {
        let help = Command::new(binary)
            .arg("--help")
            .env("DATABASE_URL", secret_url)
            .env("NATS_URL", "nats://user:s3cret-pw@127.0.0.1:1")
            .output()
            .unwrap();
        assert!(help.status.success(), "{binary}: {}", text(&help));
        assert!(!text(&help).contains("s3cret"), "{binary}: {}", text(&help));
    }
    let zero = Command::new(env!("CARGO_BIN_EXE_deal-worker"))
        .args(["run", "--poll-ms", "0"])
        .env("DATABASE_URL", secret_url)
        .output()
        .unwrap();
    assert!(!zero.status.success());
    assert!(text(&zero).contains("--poll-ms"), "{}", text(&zero));
    let down = Command::new(env!("CARGO_BIN_EXE_deal-load"))
        .env("DATABASE_URL", secret_url)
        .output()
        .unwrap();
    assert!(!down.status.success());
    let printed = text(&down);
    assert!(
        printed.starts_with(
            "deal-load: cannot connect to 127.0.0.1:1 (database app): connection refused"
        ),
        "{printed}"
    );
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(
        !printed.contains("Error: ") && !printed.contains(" { "),
        "no Debug dump: {printed}"
    );
}

/// No subcommand but `migrate` changes the schema: on a database that is behind, they stop
/// naming the versions and what to run; `migrate`, then `grant`, then they work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subcommands_need_migrate_first_and_grant_gives_roles_their_rights() {
    let db = TestDatabase::empty(4).await;
    for command in ["status", "run"] {
        let refused = deal_worker(&db.url, &[command]);
        assert!(!refused.status.success(), "{}", text(&refused));
        let said = text(&refused);
        assert!(
            said.contains("no framework migration is recorded")
                && said.contains("needs migrations up to")
                && said.contains("run `deal-worker migrate`"),
            "{said}"
        );
    }
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(tables, 0, "nothing was created before `migrate`");

    let migrated = deal_worker(&db.url, &["migrate"]);
    assert!(migrated.status.success(), "{}", text(&migrated));
    assert!(
        text(&migrated).contains("up to date"),
        "{}",
        text(&migrated)
    );
    let status = deal_worker(&db.url, &["status"]);
    assert!(status.status.success(), "{}", text(&status));

    // grant: validated, idempotent, and refused for a role that does not exist.
    let role = format!(
        "es_t{}_cli",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let missing = deal_worker(&db.url, &["grant", "writer", &role]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("does not exist"),
        "{}",
        text(&missing)
    );
    sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
        .execute(&db.pool)
        .await
        .unwrap();
    for _ in 0..2 {
        let granted = deal_worker(&db.url, &["grant", "monitor", &role]);
        assert!(granted.status.success(), "{}", text(&granted));
    }
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&db.url)
        .unwrap()
        .username(&role);
    let as_role = sqlx::ConnectOptions::to_url_lossy(&options).to_string();
    let status = deal_worker(&as_role, &["status"]);
    let said = text(&status);
    for sql in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(&sql).execute(&db.pool).await.unwrap();
    }
    assert!(status.status.success(), "{said}");
}

/// A stream id stored before `StreamId::new` refused invisible characters (here by plain SQL),
/// with a right-to-left override that makes `deal-\u{202e}1-tnuocca` read as `deal-account-1`:
/// the worker still reads it (parking its malformed event), and the tables and the status show
/// the id escaped, never the override itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_stream_id_with_an_override_is_shown_escaped() {
    let db = TestDatabase::with_max_connections(10).await;
    let id = "deal-\u{202e}1-tnuocca";
    sqlx::query(
        "INSERT INTO es_events (event_id, stream_id, stream_version, event_type,
             schema_version, payload)
         VALUES (gen_random_uuid(), $1, 1, 'Configured', 2, '{\"fields\": 5}')",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let rebuilt = deal_worker(&db.url, &["rebuild", "deals", "--dead-letter"]);
    assert!(rebuilt.status.success(), "{}", text(&rebuilt));
    let listed = deal_worker(&db.url, &["dead-letters", "deals"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let escaped = "deal-\\u{202e}1-tnuocca";
    assert!(text(&listed).contains(escaped), "{}", text(&listed));
    assert!(!text(&listed).contains('\u{202e}'), "{}", text(&listed));

    // Stopping on it instead: the status names the event, escaped.
    let stopped = deal_worker(&db.url, &["rebuild", "deals", "--restart"]);
    assert!(!stopped.status.success(), "{}", text(&stopped));
    let status = deal_worker(&db.url, &["status"]);
    assert!(
        text(&status).contains("last error of deals"),
        "{}",
        text(&status)
    );
    assert!(text(&status).contains(escaped), "{}", text(&status));
    assert!(!text(&status).contains('\u{202e}'), "{}", text(&status));
}
