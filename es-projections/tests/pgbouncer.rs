//! Writers, workers and operator calls behind a real PgBouncer, started here on a free port in
//! front of the test database's server and stopped at the end: Debian 12's package (1.18), and
//! 1.21 or later (`ES_PGBOUNCER_MODERN`: scripts/test builds Debian 13's 1.24.1 from its source)
//! for transaction pooling with `max_prepared_statements`.
//!
//! What is proven, and what docs/operations.md ("Connection poolers") says from it:
//! - **session pooling** (any version) runs everything: appends from more writers than
//!   connections, a worker (leases, checkpoints, NOTIFY wake-ups through LISTEN), `status` and
//!   `verify`. A client connection holds its server connection for its whole life, idle ones in
//!   sqlx's pool included, so PgBouncer's pool must be at least the sum of the client pools.
//! - **transaction pooling before 1.21 cannot work with sqlx**: sqlx prepares each statement
//!   under a name (`sqlx_s_1`, `sqlx_s_2`, ... per client connection) and reuses it on that client
//!   connection. PgBouncer in transaction mode gives the server connection to another client
//!   after each transaction, so a second client preparing its own `sqlx_s_1` there is refused
//!   (42P05 "already exists"), and a client may find its statement missing on another server
//!   connection. (PgBouncer's docs, "Features" / "SQL feature map for pooling modes": protocol-level
//!   prepared statements in transaction mode need `max_prepared_statements`, new in 1.21.)
//! - **transaction pooling from 1.21 with `max_prepared_statements`** runs writers, workers,
//!   migrations (their advisory locks are transaction-scoped: `pg_advisory_xact_lock`), `status`
//!   and `verify`; but LISTEN belongs to a server session, so notifications never reach a worker
//!   through it: the worker only polls unless it listens elsewhere (`Worker::listen_on`,
//!   `run --listen-url`). PostgreSQL's docs, LISTEN: "a session is registered as a listener".

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use es_core::{EventData, EventStore, ExpectedVersion, StreamId, Upcasters};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::{Worker, WorkerConfig};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// A private PgBouncer in front of the test database's server, stopped on drop.
struct Bouncer {
    dir: PathBuf,
    port: u16,
}

fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

fn pgbouncer() -> PathBuf {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("pgbouncer (Debian's package; scripts/test installs it)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// PgBouncer's config quotes values with double quotes in its auth file.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

impl Bouncer {
    /// Starts PgBouncer in `mode` ("session" or "transaction") with `server_connections`
    /// connections to the server, in front of `db`'s server.
    fn start(db: &TestDatabase, mode: &str, server_connections: u32) -> Self {
        Self::start_with(&pgbouncer(), db, mode, server_connections, "")
    }

    /// As [`Bouncer::start`], with the `binary` given and `extra` lines in its `[pgbouncer]`
    /// section.
    fn start_with(
        binary: &Path,
        db: &TestDatabase,
        mode: &str,
        server_connections: u32,
        extra: &str,
    ) -> Self {
        let upstream = url::Url::parse(&db.url).unwrap();
        let user = match upstream.username() {
            "" => "postgres".to_string(),
            user => user.to_string(),
        };
        let password = upstream.password().unwrap_or("").to_string();
        let host = upstream.host_str().unwrap_or("127.0.0.1").to_string();
        let server_port = upstream.port().unwrap_or(5432);
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("es-pgbouncer-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        // The client logs in to PgBouncer without a password (trust); PgBouncer logs in to the
        // server as the test's user, with its password if it has one.
        std::fs::write(
            dir.join("users.txt"),
            format!("{} {}\n", quoted(&user), quoted(&password)),
        )
        .unwrap();
        let password_clause = if password.is_empty() {
            String::new()
        } else {
            format!(" password={password}")
        };
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n\
                 * = host={host} port={server_port} user={user}{password_clause}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {dir}/users.txt\n\
                 pool_mode = {mode}\n\
                 default_pool_size = {server_connections}\n\
                 max_client_conn = 200\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 logfile = {dir}/pgbouncer.log\n\
                 pidfile = {dir}/pgbouncer.pid\n\
                 {extra}\n",
                dir = dir.display(),
            ),
        )
        .unwrap();
        // PgBouncer refuses to run as root: run it as the server's user then.
        let mut command = if is_root() {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        let output = command
            .arg("-d")
            .arg(dir.join("pgbouncer.ini"))
            .output()
            .unwrap();
        let bouncer = Self { dir, port };
        assert!(
            output.status.success(),
            "pgbouncer: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            bouncer.log()
        );
        bouncer
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// A pool of `max` client connections to `db` through PgBouncer.
    async fn pool(&self, db: &TestDatabase, max: u32) -> PgPool {
        let upstream = url::Url::parse(&db.url).unwrap();
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(match upstream.username() {
                "" => "postgres",
                user => user,
            })
            .database(db.name());
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match PgPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options.clone())
                .await
            {
                Ok(pool) => return pool,
                // It may still be opening its port.
                Err(error) if Instant::now() < until => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("connect through pgbouncer: {error}\n{}", self.log()),
            }
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn append_from(store: &PgEventStore, writers: usize, events_each: usize) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("s-{w}-{}", uuid::Uuid::new_v4())).unwrap();
            for i in 0..events_each {
                store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(es_core::StreamVersion(i as u64)),
                        vec![EventData::raw("Counted", 1, json!({"n": 1}))],
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn worker(pool: &PgPool, poll_interval: Duration) -> Worker {
    Worker::new(pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(WorkerConfig {
            poll_interval,
            // The lease is renewed every third of it, and a renewal also reads: long enough not
            // to wake the worker within the test's waits.
            lease_ttl: (poll_interval * 3).max(Duration::from_secs(5)),
            ..fast_config("behind-pgbouncer")
        })
}

#[tokio::test]
async fn session_pooling_runs_writers_workers_and_operators() {
    let db = TestDatabase::create().await;
    let bouncer = Bouncer::start(&db, "session", 8);
    let pool = bouncer.pool(&db, 3).await;
    es_postgres::migrate(&pool).await.unwrap();
    let store = PgEventStore::new(pool.clone());
    // More writers than client connections, more client connections than the worker's.
    append_from(&store, 8, 25).await;

    // Polling every minute: only a NOTIFY, through LISTEN on a pooled session, wakes the worker
    // within the waits below.
    let worker_pool = bouncer.pool(&db, 3).await;
    let running = spawn(worker(&worker_pool, Duration::from_secs(60)));
    wait_caught_up(&pool, "audit", Duration::from_secs(30)).await;
    // Give the listener time to subscribe before the next appends.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    append_from(&store, 2, 5).await;
    wait_caught_up(&pool, "audit", Duration::from_secs(20)).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "woken by NOTIFY, not by the poll"
    );
    running.stop().await;

    assert_matches_log(&pool, "audit_applied", "audit_streams").await;
    assert_verified(&worker(&worker_pool, Duration::from_millis(20)), "audit").await;
    let status = es_projections::status(&pool).await.unwrap();
    assert_eq!(status.projections[0].watermark, 210);
}

/// The version `binary --version` reports, as (major, minor).
fn version_of(binary: &Path) -> (u32, u32) {
    let output = Command::new(binary).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let number = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no version in {text:?}"));
    let mut parts = number.split('.').map(|p| p.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// A PgBouncer of 1.21 or later (transaction pooling with prepared statements).
fn modern_pgbouncer() -> PathBuf {
    let path = std::env::var_os("ES_PGBOUNCER_MODERN")
        .map(PathBuf::from)
        .expect(
            "ES_PGBOUNCER_MODERN must name a pgbouncer of 1.21 or later \
         (scripts/test builds Debian 13's 1.24.1 from its source)",
        );
    let version = version_of(&path);
    assert!(
        version >= (1, 21),
        "{path:?} is {version:?}, not 1.21 or later"
    );
    path
}

/// Each message in an error's chain, joined.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[tokio::test]
async fn transaction_pooling_before_1_21_refuses_sqlx_prepared_statements() {
    let debian = pgbouncer();
    let version = version_of(&debian);
    assert!(
        version < (1, 21),
        "Debian's pgbouncer is {version:?} now: transaction pooling with \
         max_prepared_statements may run here; update this test and operations.md"
    );
    let db = TestDatabase::create().await;
    // One server connection: every client's statements meet there.
    let bouncer = Bouncer::start(&db, "transaction", 1);
    let pool = bouncer.pool(&db, 2).await;
    let store = PgEventStore::new(pool.clone());
    let stream = StreamId::new("t-1").unwrap();
    let append = |i: i64| {
        let (store, stream) = (store.clone(), stream.clone());
        async move {
            store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![EventData::raw("Counted", 1, json!({"n": i}))],
                )
                .await
        }
    };
    // A first client connection prepares its `sqlx_s_1` on the one server connection...
    let mut held = pool.acquire().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *held).await.unwrap();
    // ... and the store's, on another client connection, prepares its own there.
    let mut first_error = None;
    for i in 0..10 {
        if let Err(error) = append(i).await {
            first_error = Some(error);
            break;
        }
    }
    drop(held);
    let error = first_error.expect("an append fails");
    let shown = chain(&error);
    assert!(
        shown.contains("prepared statement \"sqlx_s_") && shown.contains("already exists"),
        "{shown}"
    );
    println!("what a writer meets: {shown}");
}

#[tokio::test]
async fn transaction_pooling_from_1_21_runs_all_but_listen() {
    let db = TestDatabase::create().await;
    let bouncer = Bouncer::start_with(
        &modern_pgbouncer(),
        &db,
        "transaction",
        2,
        "max_prepared_statements = 200",
    );
    let pool = bouncer.pool(&db, 6).await;
    es_postgres::migrate(&pool).await.unwrap();
    let store = PgEventStore::new(pool.clone());
    // More writers and client connections than server connections.
    append_from(&store, 8, 25).await;
    let worker_pool = bouncer.pool(&db, 3).await;
    let running = spawn(worker(&worker_pool, Duration::from_millis(100)).without_listen());
    wait_caught_up(&pool, "audit", Duration::from_secs(30)).await;
    running.stop().await;
    assert_matches_log(&pool, "audit_applied", "audit_streams").await;
    assert_verified(
        &worker(&worker_pool, Duration::from_millis(20)).without_listen(),
        "audit",
    )
    .await;
    assert_eq!(
        es_projections::status(&pool).await.unwrap().projections[0].watermark,
        200
    );

    // Polling every minute, not listening: no wake-up (a LISTEN through the pooler would be
    // worse than none: the notification arrives on whichever client holds that server
    // session, and its statement fails with "unexpected message: NotificationResponse").
    let deaf = spawn(worker(&worker_pool, Duration::from_secs(60)).without_listen());
    tokio::time::sleep(Duration::from_millis(500)).await;
    append_from(&store, 1, 1).await;
    let head = es_projections::wait_for(
        &pool,
        "audit",
        es_core::GlobalPosition(201),
        Duration::from_secs(3),
    )
    .await;
    assert!(
        matches!(head, Err(es_projections::ProjectionError::Timeout { .. })),
        "{head:?}"
    );
    deaf.stop().await;

    // Listening on a direct connection: woken at once.
    let listening = spawn(worker(&worker_pool, Duration::from_secs(60)).listen_on(db.pool.clone()));
    // Its first read takes the event the deaf worker missed.
    wait_caught_up(&pool, "audit", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    append_from(&store, 2, 5).await;
    wait_caught_up(&pool, "audit", Duration::from_secs(20)).await;
    listening.stop().await;
    assert_matches_log(&pool, "audit_applied", "audit_streams").await;
}
