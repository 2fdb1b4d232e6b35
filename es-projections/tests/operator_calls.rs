//! What operators and batch jobs call besides `run`: `status` counting only what a projection
//! would apply and never printing a secret, `wait_for` on a name nobody runs, and a worker that
//! catches up to the head and stops.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use es_core::{
    EventData, EventEnvelope, EventStore, ExpectedVersion, GlobalPosition, StreamId, Upcasters,
};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::{ProjectionError, Projector, ProjectorError, Tables, Worker};
use serde_json::json;
use sqlx::PgConnection;

/// Counts the events of the `a-` streams only.
struct OnlyA;

#[async_trait]
impl Projector for OnlyA {
    type Event = TestEvent;

    fn name(&self) -> &str {
        "only_a"
    }

    fn tables(&self) -> &[&'static str] {
        &["only_a"]
    }

    fn accepts_stream(&self, stream: &StreamId) -> bool {
        stream.as_str().starts_with("a-")
    }

    async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError> {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (position bigint PRIMARY KEY)",
            tables.get("only_a")?
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
        for e in events {
            if e.event == TestEvent::Poison {
                return Err("poison".into());
            }
            sqlx::query(&format!(
                "INSERT INTO {} (position) VALUES ($1)",
                tables.get("only_a")?
            ))
            .bind(e.global_position.0)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

async fn write(store: &PgEventStore, stream: &str, n: usize, event_type: &str) {
    for i in 0..n {
        store
            .append(
                &StreamId::new(stream).unwrap(),
                ExpectedVersion::Any,
                vec![EventData::raw(
                    event_type,
                    1,
                    if event_type == "Poison" {
                        json!(null)
                    } else {
                        json!({"n": i})
                    },
                )],
            )
            .await
            .unwrap();
    }
}

fn worker(db: &TestDatabase) -> Worker {
    Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(OnlyA)
        .unwrap()
        .with_config(fast_config("ops"))
}

#[tokio::test]
async fn a_worker_catches_up_to_the_head_then_stops() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, "a-1", 20, "Counted").await;
    write(&store, "b-1", 30, "Counted").await;
    let head = worker(&db).catch_up(Duration::from_secs(30)).await.unwrap();
    assert_eq!(head, GlobalPosition(50));
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM only_a")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied, 20);
    let owner: Option<String> =
        sqlx::query_scalar("SELECT owner FROM es_projections WHERE name = 'only_a'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(owner, None, "the lease is released");

    // A projection that stops on an error ends it at once, with that error.
    write(&store, "a-1", 1, "Poison").await;
    let started = Instant::now();
    let result = worker(&db).catch_up(Duration::from_secs(60)).await;
    assert!(
        matches!(result, Err(ProjectionError::Handler { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not at the timeout"
    );
}

#[tokio::test]
async fn status_counts_what_a_projection_would_apply() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, "a-1", 10, "Counted").await;
    let w = worker(&db);
    w.catch_up(Duration::from_secs(30)).await.unwrap();
    // Its worker stopped; others append, mostly to streams it does not read.
    write(&store, "b-1", 50, "Counted").await;
    write(&store, "a-1", 3, "Counted").await;
    let mut status = es_projections::status(&db.pool).await.unwrap();
    let row = &status.projections[0];
    assert_eq!(row.lag_events, 53, "positions after the checkpoint");
    assert_eq!(row.to_apply, None);
    es_projections::count_to_apply(&w, &mut status)
        .await
        .unwrap();
    let row = &status.projections[0];
    assert_eq!(
        row.to_apply,
        Some(es_projections::ToApply {
            events: 3,
            more: false
        })
    );
    let shown = status.to_string();
    let line = shown.lines().find(|l| l.starts_with("only_a")).unwrap();
    assert!(line.split_whitespace().any(|c| c == "3"), "{shown}");
    assert!(!line.contains("53"), "{shown}");
}

/// The metrics say both: log positions behind, and what the projection would apply of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_a_projection_would_apply() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, "a-1", 10, "Counted").await;
    worker(&db).catch_up(Duration::from_secs(30)).await.unwrap();
    write(&store, "b-1", 50, "Counted").await;
    write(&store, "a-1", 3, "Counted").await;
    let observer = es_projections::observe::Observer::new(es_projections::observe::ObserveConfig {
        sample_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .unwrap();
    let w = worker(&db).with_observer(&observer);
    let serving = es_projections::observe::serve("127.0.0.1:0", &observer, &w, &[])
        .await
        .unwrap();
    let url = format!("http://{}/metrics", serving.local_addr());
    let until = deadline(20);
    let metric = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("projection=\"only_a\""))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    loop {
        let text = scrape(&url).await;
        if let (Some(lag), Some(to_apply)) = (
            metric(&text, "es_projection_lag_events"),
            metric(&text, "es_projection_to_apply_events"),
        ) {
            assert_eq!((lag.as_str(), to_apply.as_str()), ("53", "3"), "{text}");
            break;
        }
        assert!(Instant::now() < until, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serving.stop().await;
}

/// GET `url` over plain HTTP/1.1 (the observer's own server).
async fn scrape(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn status_shows_the_horizon_holder_on_one_line_and_never_a_secret() {
    let db = TestDatabase::create().await;
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *holder).await.unwrap();
    // A temporary table gives the transaction an id: it holds the horizon.
    sqlx::query("CREATE TEMP TABLE held (x int)")
        .execute(&mut *holder)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    // The horizon is the cluster's: a concurrent test's older transaction may show instead of
    // ours until it ends.
    let ours = format!("horizon held by pid {pid} ");
    let shown_for_us = || async {
        let until = deadline(30);
        loop {
            let shown = es_projections::status(&db.pool).await.unwrap().to_string();
            if shown.contains(&ours) {
                return shown;
            }
            assert!(Instant::now() < until, "{shown}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    sqlx::query("SELECT 1\n   AS one,\n\t2 AS two")
        .execute(&mut *holder)
        .await
        .unwrap();
    let shown = shown_for_us().await;
    assert!(
        shown.contains("SELECT 1 AS one, 2 AS two"),
        "one line: {shown}"
    );
    sqlx::query("SELECT 'ALTER ROLE app PASSWORD ''hunter2'''")
        .execute(&mut *holder)
        .await
        .unwrap();
    let shown = shown_for_us().await;
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("query not shown"), "{shown}");
    sqlx::query("ROLLBACK").execute(&mut *holder).await.unwrap();
}

#[tokio::test]
async fn waiting_on_a_name_nobody_runs_says_so() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    write(&store, "a-1", 2, "Counted").await;
    let w = worker(&db);
    w.catch_up(Duration::from_secs(30)).await.unwrap();

    let started = Instant::now();
    let result = es_projections::wait_for(
        &db.pool,
        "only_b",
        GlobalPosition(1),
        Duration::from_secs(60),
    )
    .await;
    match result {
        Err(ProjectionError::NotStarted { projection, known }) => {
            assert_eq!(projection, "only_b");
            assert_eq!(known, ["only_a"]);
        }
        other => panic!("expected NotStarted, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not at the timeout"
    );

    // Through the worker, a name it does not register is refused at once.
    let result = w
        .wait_for("only_b", GlobalPosition(1), Duration::from_secs(60))
        .await;
    assert!(
        matches!(result, Err(ProjectionError::UnknownProjection(_))),
        "{result:?}"
    );
    w.wait_for("only_a", GlobalPosition(2), Duration::from_secs(5))
        .await
        .unwrap();
}
