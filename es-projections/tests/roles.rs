//! Least privilege, against a real PostgreSQL: LOGIN roles given the framework's grants
//! (`es_postgres::grant`) each do their job, and nothing more. The writer appends through
//! `PgEventStore`; the projector runs a worker that creates its tables (its `setup`) and catches
//! up; the reader reads the views; `status` and `verify` run as a role that may only SELECT.
//! No role can UPDATE or DELETE events, nor disable the immutability trigger (only the owner
//! may ALTER a table), and the reader cannot append.
//!
//! Roles are cluster-wide: each test makes its own, with unique names, and drops them after.

#![allow(clippy::unwrap_used)]

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::{assert_matches_log, fast_config, spawn, wait_caught_up, Audit, TestEvent};
use es_core::{EventData, EventStore, ExpectedVersion, StreamId, StreamVersion, Upcasters};
use es_postgres::testing::TestDatabase;
use es_postgres::{grant, PgEventStore, Role};
use es_projections::Worker;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// LOGIN roles made for one test, dropped (with what they own and were granted in the test's
/// database) when it ends, pass or fail.
struct Roles {
    url: String,
    names: Vec<String>,
}

impl Roles {
    async fn create(db: &TestDatabase, kinds: &[&str]) -> Self {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let names: Vec<String> = kinds
            .iter()
            .map(|k| format!("es_t{}_{k}", &tag[..12]))
            .collect();
        for name in &names {
            sqlx::query(&format!("CREATE ROLE {name} LOGIN"))
                .execute(&db.pool)
                .await
                .unwrap();
        }
        Roles {
            url: db.url.clone(),
            names,
        }
    }

    fn name(&self, kind: &str) -> &str {
        self.names.iter().find(|n| n.ends_with(kind)).unwrap()
    }

    /// A pool on the test's database, logged in as the role of `kind`.
    async fn pool(&self, kind: &str) -> PgPool {
        let options = PgConnectOptions::from_str(&self.url)
            .unwrap()
            .username(self.name(kind));
        PgPoolOptions::new()
            .max_connections(6)
            .connect_with(options)
            .await
            .unwrap()
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let (url, names) = (self.url.clone(), self.names.clone());
        es_postgres::testing::clean_up_from_drop(async move {
            let Ok(mut conn) = PgConnection::connect(&url).await else {
                return;
            };
            for name in &names {
                let _ = sqlx::query(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'"
                ))
                .execute(&mut conn)
                .await;
                let _ = sqlx::query(&format!("DROP OWNED BY {name}"))
                    .execute(&mut conn)
                    .await;
                let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {name}"))
                    .execute(&mut conn)
                    .await;
            }
        });
    }
}

/// The error PostgreSQL gave for `sql` run by `pool`, which must fail for want of a privilege
/// (SQLSTATE 42501: "permission denied" or "must be owner").
async fn refused(pool: &PgPool, sql: &str) -> String {
    match sqlx::query(sql).execute(pool).await {
        Ok(_) => panic!("{sql} was allowed"),
        Err(sqlx::Error::Database(db)) => {
            assert_eq!(
                db.code().as_deref(),
                Some("42501"),
                "{sql}: {}",
                db.message()
            );
            db.message().to_string()
        }
        Err(other) => panic!("{sql}: {other}"),
    }
}

/// What no role but the owner may do to the event log.
async fn cannot_change_events(pool: &PgPool) {
    refused(pool, "UPDATE es_events SET payload = '{}'").await;
    refused(pool, "DELETE FROM es_events").await;
    refused(pool, "TRUNCATE es_events").await;
    let message = refused(
        pool,
        "ALTER TABLE es_events DISABLE TRIGGER es_events_immutable_rows",
    )
    .await;
    assert!(message.contains("must be owner"), "{message}");
    refused(pool, "DROP TABLE es_events").await;
}

fn counted(n: i64) -> EventData {
    EventData::raw("Counted", 1, json!({ "n": n }))
}

fn worker(pool: PgPool, owner: &str) -> Worker {
    Worker::new(pool, Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(fast_config(owner))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_its_job_and_nothing_more() {
    let db = TestDatabase::create().await;
    let roles = Roles::create(&db, &["writer", "projector", "reader"]).await;
    let (writer, projector, reader) = (
        roles.name("writer").to_string(),
        roles.name("projector").to_string(),
        roles.name("reader").to_string(),
    );
    grant(&db.pool, &Role::Writer, &writer).await.unwrap();
    grant(&db.pool, &Role::Projector, &projector).await.unwrap();
    let as_reader = Role::Reader {
        projectors: vec![projector.clone()],
    };
    grant(&db.pool, &as_reader, &reader).await.unwrap();
    // Idempotent: granting again changes nothing and does not fail.
    grant(&db.pool, &Role::Writer, &writer).await.unwrap();

    // The writer appends through the store, with snapshots' and event types' tables written
    // on the way.
    let writer_pool = roles.pool("writer").await;
    let store = PgEventStore::new(writer_pool.clone());
    for s in 0..5 {
        let stream = StreamId::new(format!("count-{s}")).unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![counted(1), counted(2)],
            )
            .await
            .unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::Exact(StreamVersion(2)),
                vec![counted(3)],
            )
            .await
            .unwrap();
    }
    let read = store
        .read_stream(&StreamId::new("count-0").unwrap(), StreamVersion(0), None)
        .await
        .unwrap();
    assert_eq!(read.len(), 3, "the writer reads its events");
    cannot_change_events(&writer_pool).await;
    refused(
        &writer_pool,
        "UPDATE es_projections SET watermark = 0 WHERE false",
    )
    .await;
    refused(&writer_pool, "CREATE TABLE writer_table (x int)").await;

    // The projector's worker creates its tables (setup) and catches up.
    let projector_pool = roles.pool("projector").await;
    let running = spawn(worker(projector_pool.clone(), "projector-1"));
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    running.stop().await;
    assert_matches_log(&db.pool, "audit_applied", "audit_streams").await;
    let owner: String = sqlx::query_scalar(
        "SELECT tableowner FROM pg_tables WHERE tablename LIKE 'audit_applied_g%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(owner, projector, "setup ran as the projector role");
    cannot_change_events(&projector_pool).await;
    let appended = PgEventStore::new(projector_pool.clone())
        .append(
            &StreamId::new("count-9").unwrap(),
            ExpectedVersion::NoStream,
            vec![counted(1)],
        )
        .await;
    assert!(appended.is_err(), "a projector cannot append");
    refused(
        &projector_pool,
        "INSERT INTO es_snapshots (stream_id, aggregate_type, stream_version, state_version, state)
         VALUES ('x', 'y', 1, 1, '{}')",
    )
    .await;

    // The reader reads the views, and nothing else.
    let reader_pool = roles.pool("reader").await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_applied")
        .fetch_one(&reader_pool)
        .await
        .unwrap();
    assert_eq!(rows, 15);
    let total: i64 = sqlx::query_scalar("SELECT sum(total)::bigint FROM audit_streams")
        .fetch_one(&reader_pool)
        .await
        .unwrap();
    assert_eq!(total, 30);
    cannot_change_events(&reader_pool).await;
    let appended = PgEventStore::new(reader_pool.clone())
        .append(
            &StreamId::new("count-9").unwrap(),
            ExpectedVersion::NoStream,
            vec![counted(1)],
        )
        .await;
    assert!(appended.is_err(), "a reader cannot append");
    refused(&reader_pool, "SELECT count(*) FROM es_events").await;
    refused(&reader_pool, "DELETE FROM audit_applied").await;
    refused(&reader_pool, "UPDATE es_projections SET watermark = 0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_verify_run_as_a_role_that_may_only_select() {
    let db = TestDatabase::create().await;
    let roles = Roles::create(&db, &["select", "monitor"]).await;
    let (select, monitor) = (
        roles.name("select").to_string(),
        roles.name("monitor").to_string(),
    );
    // A role that may only SELECT, whatever the framework's grants say.
    for sql in [
        format!("GRANT USAGE ON SCHEMA public TO {select}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {select}"),
    ] {
        sqlx::query(&sql).execute(&db.pool).await.unwrap();
    }
    grant(&db.pool, &Role::Monitor, &monitor).await.unwrap();

    let store = PgEventStore::new(db.pool.clone());
    for s in 0..3 {
        let stream = StreamId::new(format!("count-{s}")).unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![counted(1), counted(2)],
            )
            .await
            .unwrap();
    }
    let running = spawn(worker(db.pool.clone(), "owner-1"));
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    running.stop().await;

    let select_pool = roles.pool("select").await;
    let status = es_projections::status(&select_pool).await.unwrap();
    assert_eq!(status.projections.len(), 1);
    assert_eq!(status.projections[0].watermark, 6);
    let report = es_projections::verify(&worker(select_pool.clone(), "select-1"), "audit")
        .await
        .unwrap();
    assert!(report.ok(), "{report}");
    assert!(!report.recorded, "a SELECT-only role cannot record it");
    refused(
        &select_pool,
        "UPDATE es_projections SET last_verified_ok = true",
    )
    .await;
    // The CLI's subcommands, with their schema check, as that role.
    let url = PgConnectOptions::from_str(&db.url)
        .unwrap()
        .username(&select)
        .to_url_lossy()
        .to_string();
    for command in ["status", "verify"] {
        let pool = select_pool.clone();
        let code = es_projections::cli::main_from(
            "test-worker",
            ["test-worker", "--database-url", &url, command],
            move |_| Ok(worker(pool, "select-cli")),
        )
        .await;
        assert_eq!(code, std::process::ExitCode::SUCCESS, "{command}");
    }

    // The monitor records its verification (status shows it), and may change nothing else.
    let monitor_pool = roles.pool("monitor").await;
    let report = es_projections::verify(&worker(monitor_pool.clone(), "monitor-1"), "audit")
        .await
        .unwrap();
    assert!(report.ok() && report.recorded, "{report}");
    let status = es_projections::status(&monitor_pool).await.unwrap();
    let verified = status.projections[0].last_verified.as_ref().map(|v| v.ok);
    assert_eq!(verified, Some(true));
    refused(&monitor_pool, "UPDATE es_projections SET watermark = 0").await;
    cannot_change_events(&monitor_pool).await;
}

#[tokio::test]
async fn grant_refuses_a_role_that_does_not_exist_and_a_reader_without_projector() {
    let db = TestDatabase::create().await;
    let missing = format!(
        "es_t{}_none",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let error = grant(&db.pool, &Role::Writer, &missing).await.unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
    let error = grant(&db.pool, &Role::Writer, "").await.unwrap_err();
    assert!(
        error.to_string().contains("not a valid role name"),
        "{error}"
    );
    let roles = Roles::create(&db, &["reader"]).await;
    let error = grant(
        &db.pool,
        &Role::Reader { projectors: vec![] },
        roles.name("reader"),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("projector"), "{error}");
}
