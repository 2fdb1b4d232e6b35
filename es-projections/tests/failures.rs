//! A bad event stops a projection loudly, naming it, with the checkpoint before it; the
//! dead-letter policy parks it instead. Upcasting happens before the projector sees events.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use es_core::{EventData, EventStore, ExpectedVersion, StreamId, Upcasters};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::dead_letters::{self, Action, Cause, LetterState, Target};
use es_projections::{ErrorPolicy, ProjectionError, Worker};
use serde_json::json;

async fn append(
    store: &PgEventStore,
    stream: &str,
    event_type: &str,
    payload: serde_json::Value,
) -> i64 {
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

async fn checkpoint(db: &TestDatabase) -> (i64, String, Option<String>) {
    sqlx::query_as("SELECT watermark, state, last_error FROM es_projections WHERE name = 'audit'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_stops_the_projection_naming_the_event() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    for i in 0..5 {
        append(&store, "a", "Counted", json!({"n": i})).await;
    }
    let poison = append(&store, "b", "Poison", json!(null)).await;
    for i in 0..5 {
        append(&store, "a", "Counted", json!({"n": i})).await;
    }
    // One batch holds everything: the good events before the poison must roll back with it.
    let mut config = fast_config("stopper");
    config.batch_size = 1000;
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(config);
    let result = tokio::time::timeout(Duration::from_secs(30), worker.run(std::future::pending()))
        .await
        .expect("the worker stops by itself");
    match result {
        Err(ProjectionError::Handler {
            projection, event, ..
        }) => {
            assert_eq!(projection, "audit");
            assert_eq!(event.position.0, poison);
            assert_eq!(event.stream.as_str(), "b");
            assert_eq!(event.event_type, "Poison");
            assert_eq!(event.schema_version, 1);
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
    let (watermark, state, error) = checkpoint(&db).await;
    assert_eq!(watermark, 0, "the checkpoint stays before the failed batch");
    assert_eq!(state, "failed");
    assert!(error.unwrap().contains(&format!("position {poison}")));
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_applied")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied, 0);
    let status = es_projections::status(&db.pool).await.unwrap();
    assert!(status.to_string().contains("last error of audit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_policy_parks_the_event_and_applies_the_rest() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    for i in 0..5 {
        append(&store, "a", "Counted", json!({"n": i})).await;
    }
    let poison = append(&store, "b", "Poison", json!(null)).await;
    let undecodable = append(&store, "c", "Counted", json!({"n": "not a number"})).await;
    for i in 0..5 {
        append(&store, "a", "Counted", json!({"n": i})).await;
    }
    let mut config = fast_config("parker");
    config.error_policy = ErrorPolicy::DeadLetter;
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(config);
    let running = spawn(worker.clone());
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    running.stop().await;
    let parked: Vec<(i64, String, i32)> = sqlx::query_as(
        "SELECT global_position, event_type, schema_version FROM es_dead_letters WHERE projection = 'audit' ORDER BY global_position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        parked,
        vec![
            (poison, "Poison".into(), 1),
            (undecodable, "Counted".into(), 1)
        ]
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_applied")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_event_holds_its_stream_in_order_until_an_operator_acts() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    append(&store, "b", "Counted", json!({"n": 1})).await;
    let poison = append(&store, "b", "Poison", json!(null)).await;
    for i in 0..3 {
        append(&store, "b", "Counted", json!({"n": i})).await;
        append(&store, "a", "Counted", json!({"n": i})).await;
    }
    let mut config = fast_config("parker");
    config.error_policy = ErrorPolicy::DeadLetter;
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(config);
    let running = spawn(worker.clone());
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    // b's events after the poison wait behind it (the projector would refuse them out of
    // order: it checks each stream's versions); a goes on.
    let letters = dead_letters::list(&db.pool, Some("audit"), false)
        .await
        .unwrap();
    let causes: Vec<(i64, Cause)> = letters
        .iter()
        .map(|l| (l.event.stream_version.0 as i64, l.cause))
        .collect();
    assert_eq!(
        causes,
        vec![
            (2, Cause::Failed),
            (3, Cause::Held),
            (4, Cause::Held),
            (5, Cause::Held)
        ]
    );
    let applied = |stream: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_applied WHERE stream_id = $1")
                .bind(stream)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!((applied("a").await, applied("b").await), (3, 1));
    // A retry of the poison fails again: the stream keeps waiting.
    dead_letters::request(
        &db.pool,
        "audit",
        Action::Retry,
        &Target::Stream(StreamId::new("b").unwrap()),
        "test",
        None,
    )
    .await
    .unwrap();
    let deadline = deadline(30);
    loop {
        let letters = dead_letters::list(&db.pool, Some("audit"), false)
            .await
            .unwrap();
        if letters.iter().all(|l| l.requested.is_none()) {
            assert_eq!(letters.len(), 4);
            assert_eq!(letters[0].attempts, 2);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retry not carried out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Skipped with a reason: the held events go next, in order. This projector checks each
    // stream's continuity, so the first of them now fails (version 3 after 1) and becomes the
    // letter its stream waits behind: skipping is the operator's decision, and a projector that
    // cannot take a gap says so instead of applying around it.
    dead_letters::request(
        &db.pool,
        "audit",
        Action::Skip,
        &Target::Position(es_core::GlobalPosition(poison)),
        "test",
        Some("a test poison"),
    )
    .await
    .unwrap();
    let letters = loop {
        let letters = dead_letters::list(&db.pool, Some("audit"), false)
            .await
            .unwrap();
        if letters.len() == 3 && letters[0].cause == Cause::Failed {
            break letters;
        }
        assert!(std::time::Instant::now() < deadline, "skip not carried out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    running.stop().await;
    assert_eq!(letters[0].event.stream_version.0, 3);
    assert!(
        letters[0].error.contains("out of order"),
        "{}",
        letters[0].error
    );
    assert_eq!(applied("b").await, 1);
    let all = dead_letters::list(&db.pool, Some("audit"), true)
        .await
        .unwrap();
    assert_eq!(all[0].state, LetterState::Skipped);
    assert_eq!(all[0].reason.as_deref(), Some("a test poison"));
    assert_verified(&worker, "audit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_event_type_stops_the_worker_with_a_typed_error() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    append(&store, "a", "Counted", json!({"n": 1})).await;
    let mystery = append(&store, "m", "Mystery", json!({})).await;
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(fast_config("typed"));
    let result = tokio::time::timeout(Duration::from_secs(30), worker.run(std::future::pending()))
        .await
        .unwrap();
    match result {
        Err(ProjectionError::Decode {
            source:
                es_core::DecodeError {
                    at,
                    kind: es_core::DecodeErrorKind::UnknownEventType,
                },
            ..
        }) => {
            assert_eq!(at.position.0, mystery);
            assert_eq!(at.event_type, "Mystery");
            assert_eq!(at.schema_version, 1);
            assert_eq!(at.stream.as_str(), "m");
        }
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
}

/// Stored as v1 "Increment" {"by"} and v1 "Counted" {"n"} by an old deployment; the projector
/// only knows Counted v2 and must receive every event in that shape.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Current {
    Counted { n: i64, unit: String },
}

impl es_core::DomainEvent for Current {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Counted", 2)];
}

struct Sums;

#[async_trait::async_trait]
impl es_projections::Projector for Sums {
    type Event = Current;
    fn name(&self) -> &str {
        "sums"
    }
    fn tables(&self) -> &[&'static str] {
        &["sums"]
    }
    async fn setup(
        &self,
        conn: &mut sqlx::PgConnection,
        tables: &es_projections::Tables,
    ) -> Result<(), es_projections::ProjectorError> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (stream_id text, n bigint, unit text)",
            tables.get("sums")?
        );
        sqlx::query(&sql).execute(conn).await?;
        Ok(())
    }
    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        tables: &es_projections::Tables,
        events: &[es_core::EventEnvelope<Current>],
    ) -> Result<(), es_projections::ProjectorError> {
        let sql = format!("INSERT INTO {} VALUES ($1, $2, $3)", tables.get("sums")?);
        for e in events {
            let Current::Counted { n, unit } = &e.event;
            sqlx::query(&sql)
                .bind(e.stream_id.as_str())
                .bind(n)
                .bind(unit)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_receive_upcast_events_only() {
    let db = TestDatabase::create().await;
    let mut conn = db.pool.acquire().await.unwrap();
    insert_raw(&mut conn, "legacy", 1, "Increment", json!({"by": 4})).await;
    insert_raw(&mut conn, "legacy", 2, "Counted", json!({"n": 5})).await;
    drop(conn);
    // A chain that reaches Counted v1 with no step on to v2 fails at start-up.
    let broken = Upcasters::builder()
        .register::<Current>()
        .rename("Increment", 0, "Counted", Ok)
        .build();
    assert!(matches!(
        broken,
        Err(es_core::UpcasterChainError::MissingStep { version: 1, .. })
    ));
    let upcasters = Upcasters::builder()
        .register::<Current>()
        .rename("Increment", 1, "Counted", |p| {
            Ok(json!({ "n": p["by"], "unit": "kWh" }))
        })
        .step("Counted", 1, |mut p| {
            p["unit"] = json!("kWh");
            Ok(p)
        })
        .build()
        .unwrap();
    let store = PgEventStore::new(db.pool.clone());
    let id = StreamId::new("legacy").unwrap();
    let current = EventData::from_event(
        &Current::Counted {
            n: 6,
            unit: "MWh".into(),
        },
        Default::default(),
    )
    .unwrap();
    assert_eq!(
        current.schema_version, 2,
        "writing stamps the current version"
    );
    store
        .append(
            &id,
            ExpectedVersion::Exact(es_core::StreamVersion(2)),
            vec![current],
        )
        .await
        .unwrap();
    let worker = Worker::new(db.pool.clone(), upcasters)
        .projection(Sums)
        .unwrap()
        .with_config(fast_config("upcast"));
    let running = spawn(worker.clone());
    wait_caught_up_named(&db, "sums").await;
    running.stop().await;
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT n, unit FROM sums ORDER BY n")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![(4, "kWh".into()), (5, "kWh".into()), (6, "MWh".into())]
    );
}

async fn wait_caught_up_named(db: &TestDatabase, name: &str) {
    wait_caught_up(&db.pool, name, Duration::from_secs(30)).await;
}

/// `wait_for` returns at once when the projection has stopped on an error, instead of waiting out
/// its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_failed_projection_fails_at_once() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let poison = append(&store, "b", "Poison", json!(null)).await;
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(fast_config("waited"));
    let stopped = worker.run(std::future::pending()).await;
    assert!(stopped.is_err());
    // A timeout of an hour: only the failure can end this wait.
    let waited = es_projections::wait_for(
        &db.pool,
        "audit",
        es_core::GlobalPosition(poison),
        Duration::from_secs(3600),
    )
    .await;
    match waited {
        Err(ProjectionError::Failed { projection, error }) => {
            assert_eq!(projection, "audit");
            assert!(error.contains("poison"), "{error}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// Events of a stream the projector does not read are skipped before decoding, whatever their
/// type: a projector need not know other contexts' event types. (An unknown type on a stream it
/// does read stops it: `an_unregistered_event_type_stops_the_worker_with_a_typed_error`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_on_streams_a_projector_does_not_read_are_skipped() {
    struct OnlyA;
    #[async_trait::async_trait]
    impl es_projections::Projector for OnlyA {
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
        async fn setup(
            &self,
            conn: &mut sqlx::PgConnection,
            tables: &es_projections::Tables,
        ) -> Result<(), es_projections::ProjectorError> {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} (position bigint PRIMARY KEY)",
                tables.get("only_a")?
            );
            sqlx::query(&sql).execute(conn).await?;
            Ok(())
        }
        async fn apply(
            &self,
            conn: &mut sqlx::PgConnection,
            tables: &es_projections::Tables,
            events: &[es_core::EventEnvelope<TestEvent>],
        ) -> Result<(), es_projections::ProjectorError> {
            let sql = format!("INSERT INTO {} VALUES ($1)", tables.get("only_a")?);
            for e in events {
                sqlx::query(&sql)
                    .bind(e.global_position.0)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }
    }
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    append(&store, "a-1", "Counted", json!({"n": 1})).await;
    append(&store, "other-1", "Mystery", json!({})).await;
    append(&store, "a-1", "Counted", json!({"n": 2})).await;
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(OnlyA)
        .unwrap()
        .with_config(fast_config("only-a"));
    let running = spawn(worker.clone());
    wait_caught_up_named(&db, "only_a").await;
    running.stop().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM only_a")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied, 2);
    assert_verified(&worker, "only_a").await;
}

/// A lock timeout raised by the projector's own SQL (another session holds a row it needs) is a
/// transient error: retried from the checkpoint until the lock is free, never recorded as a
/// failure nor parked, even under the dead-letter policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_inside_apply_are_retried() {
    struct Locking;
    #[async_trait::async_trait]
    impl es_projections::Projector for Locking {
        type Event = TestEvent;
        fn name(&self) -> &str {
            "locking"
        }
        fn tables(&self) -> &[&'static str] {
            &["locking"]
        }
        async fn setup(
            &self,
            conn: &mut sqlx::PgConnection,
            tables: &es_projections::Tables,
        ) -> Result<(), es_projections::ProjectorError> {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} (position bigint PRIMARY KEY)",
                tables.get("locking")?
            );
            sqlx::query(&sql).execute(conn).await?;
            Ok(())
        }
        async fn apply(
            &self,
            conn: &mut sqlx::PgConnection,
            tables: &es_projections::Tables,
            events: &[es_core::EventEnvelope<TestEvent>],
        ) -> Result<(), es_projections::ProjectorError> {
            sqlx::query("SET LOCAL lock_timeout = '50ms'")
                .execute(&mut *conn)
                .await?;
            sqlx::query("SELECT * FROM contended FOR UPDATE")
                .execute(&mut *conn)
                .await?;
            let sql = format!("INSERT INTO {} VALUES ($1)", tables.get("locking")?);
            for e in events {
                sqlx::query(&sql)
                    .bind(e.global_position.0)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }
    }
    let db = TestDatabase::create().await;
    sqlx::raw_sql("CREATE TABLE contended (id int PRIMARY KEY); INSERT INTO contended VALUES (1)")
        .execute(&db.pool)
        .await
        .unwrap();
    let store = PgEventStore::new(db.pool.clone());
    for i in 0..5 {
        append(&store, "s", "Counted", json!({ "n": i })).await;
    }
    // Hold the row the projector needs while the worker tries, through several backoffs.
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT * FROM contended FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut config = fast_config("locking");
    config.error_policy = ErrorPolicy::DeadLetter;
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Locking)
        .unwrap()
        .with_config(config);
    let running = spawn(worker.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (watermark, state, error): (i64, String, Option<String>) = sqlx::query_as(
        "SELECT watermark, state, last_error FROM es_projections WHERE name = 'locking'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((watermark, state.as_str(), error), (0, "running", None));
    holder.rollback().await.unwrap();
    wait_caught_up_named(&db, "locking").await;
    running.stop().await;
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM es_dead_letters")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0, "nothing was parked");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM locking")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied, 5);
}

/// A batch that takes longer than the lease extends the lease from its end, not its start: right
/// after such a batch commits, the lease is still current (with the transaction's start time it
/// would already have expired, and a standby could take over at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_batch_extends_its_lease_from_its_end() {
    struct Slow;
    #[async_trait::async_trait]
    impl es_projections::Projector for Slow {
        type Event = TestEvent;
        fn name(&self) -> &str {
            "slow"
        }
        fn tables(&self) -> &[&'static str] {
            &["slow"]
        }
        async fn setup(
            &self,
            conn: &mut sqlx::PgConnection,
            tables: &es_projections::Tables,
        ) -> Result<(), es_projections::ProjectorError> {
            let sql = format!("CREATE TABLE IF NOT EXISTS {} (n int)", tables.get("slow")?);
            sqlx::query(&sql).execute(conn).await?;
            Ok(())
        }
        async fn apply(
            &self,
            _: &mut sqlx::PgConnection,
            _: &es_projections::Tables,
            _: &[es_core::EventEnvelope<TestEvent>],
        ) -> Result<(), es_projections::ProjectorError> {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(())
        }
    }
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let mut config = fast_config("slow");
    config.lease_ttl = Duration::from_secs(1);
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Slow)
        .unwrap()
        .with_config(config);
    let running = spawn(worker.clone());
    append(&store, "s", "Counted", json!({"n": 1})).await;
    let until = deadline(30);
    let current = loop {
        let row: Option<(i64, bool)> = sqlx::query_as(
            "SELECT watermark, coalesce(lease_expires_at > clock_timestamp(), false) FROM es_projections
             WHERE name = 'slow'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if let Some((watermark, current)) = row {
            if watermark > 0 {
                break current;
            }
        }
        assert!(
            std::time::Instant::now() < until,
            "the batch never committed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(current, "the lease expired with the batch that extended it");
    running.stop().await;
}

/// The log holds `Counted` at schema version 3, which this worker's registry (current v1, no
/// steps) cannot read: `run` and `rebuild` refuse at start-up, naming the pair, before anything
/// is applied, even the events before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_version_with_no_path_fails_at_start_up() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    append(&store, "a", "Counted", json!({"n": 1})).await;
    store
        .append(
            &StreamId::new("a").unwrap(),
            ExpectedVersion::Any,
            vec![EventData::raw("Counted", 3, json!({"n": 2}))],
        )
        .await
        .unwrap();
    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(fast_config("start-up"));
    let refused = worker.run(std::future::pending()).await;
    match &refused {
        Err(ProjectionError::Unreadable(es_core::UpcasterChainError::StoredWithoutPath {
            event_type,
            schema_version: 3,
            current: 1,
            ..
        })) => assert_eq!(event_type, "Counted"),
        other => panic!("expected a start-up refusal, got {other:?}"),
    }
    assert!(refused.unwrap_err().to_string().contains("Counted v3"));
    let rebuilt = es_projections::rebuild(
        &worker,
        "audit",
        &es_projections::RebuildOptions::default(),
        |_| {},
    )
    .await;
    assert!(
        matches!(rebuilt, Err(ProjectionError::Unreadable(_))),
        "{rebuilt:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM es_projections")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "nothing was set up or applied");
}
