//! Shared fixtures: an audit projector that records every event it applies and checks stream
//! order as it goes, and helpers to write events and wait.

#![allow(clippy::unwrap_used, dead_code)]

use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::{DomainEvent, EventEnvelope, GlobalPosition};
use es_projections::{Projector, ProjectorError, Tables, WorkerConfig};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

/// The test's events: a number, or poison that the projector refuses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TestEvent {
    Counted { n: i64 },
    Poison,
}

impl DomainEvent for TestEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Counted", 1), ("Poison", 1)];
}

/// Records each applied event once (the primary key fails a second application) and keeps each
/// stream's version, failing on any out-of-order delivery.
pub struct Audit {
    pub name: &'static str,
}

#[async_trait]
impl Projector for Audit {
    type Event = TestEvent;

    fn name(&self) -> &str {
        self.name
    }

    fn tables(&self) -> &[&'static str] {
        match self.name {
            "audit" => &["audit_applied", "audit_streams"],
            "audit_clean" => &["clean_applied", "clean_streams"],
            _ => &["other_applied", "other_streams"],
        }
    }

    async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError> {
        let t = self.tables();
        let (applied, streams) = (tables.get(t[0])?, tables.get(t[1])?);
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {applied} (position bigint PRIMARY KEY, stream_id text NOT NULL,
                 stream_version bigint NOT NULL, n bigint NOT NULL)"
        ))
        .execute(&mut *conn)
        .await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {streams} (stream_id text PRIMARY KEY, version bigint NOT NULL,
                 total bigint NOT NULL)"
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
        let t = self.tables();
        let (applied, streams) = (tables.get(t[0])?, tables.get(t[1])?);
        for e in events {
            let n = match e.event {
                TestEvent::Counted { n } => n,
                TestEvent::Poison => return Err("poison event refused".into()),
            };
            let version = e.stream_version.0 as i64;
            sqlx::query(&format!(
                "INSERT INTO {applied} (position, stream_id, stream_version, n) VALUES ($1, $2, $3, $4)"
            ))
            .bind(e.global_position.0)
            .bind(e.stream_id.as_str())
            .bind(version)
            .bind(n)
            .execute(&mut *conn)
            .await?;
            let moved = if version == 1 {
                sqlx::query(&format!(
                    "INSERT INTO {streams} (stream_id, version, total) VALUES ($1, 1, $2)"
                ))
                .bind(e.stream_id.as_str())
                .bind(n)
                .execute(&mut *conn)
                .await?
            } else {
                sqlx::query(&format!(
                    "UPDATE {streams} SET version = $2, total = total + $3
                     WHERE stream_id = $1 AND version = $2 - 1"
                ))
                .bind(e.stream_id.as_str())
                .bind(version)
                .bind(n)
                .execute(&mut *conn)
                .await?
            };
            if moved.rows_affected() != 1 {
                return Err(
                    format!("stream {} out of order at version {version}", e.stream_id).into(),
                );
            }
        }
        Ok(())
    }
}

pub fn fast_config(owner: &str) -> WorkerConfig {
    WorkerConfig {
        batch_size: 100,
        // Small batches always: tests count on batches of at most 100.
        catch_up_batch_size: 0,
        poll_interval: Duration::from_millis(20),
        lease_ttl: Duration::from_secs(5),
        owner: owner.to_string(),
        ..WorkerConfig::default()
    }
}

/// Inserts events as a raw transaction would (old deployments, or any writer): the caller
/// controls the transaction.
pub async fn insert_raw(
    conn: &mut PgConnection,
    stream: &str,
    version: i64,
    event_type: &str,
    payload: serde_json::Value,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload)
         VALUES ($1, $2, $3, $4, 1, $5) RETURNING global_position",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(stream)
    .bind(version)
    .bind(event_type)
    .bind(payload)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Waits until `name` covers every committed event (or panics after `timeout`).
pub async fn wait_caught_up(pool: &PgPool, name: &str, timeout: Duration) {
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM es_events")
        .fetch_one(pool)
        .await
        .unwrap();
    es_projections::wait_for(pool, name, GlobalPosition(head), timeout)
        .await
        .unwrap();
}

/// Asserts the audit tables hold every committed event exactly once and each stream's total.
pub async fn assert_matches_log(pool: &PgPool, applied: &str, streams: &str) {
    let missing: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM es_events e WHERE e.event_type = 'Counted'
           AND NOT EXISTS (SELECT 1 FROM {applied} a WHERE a.position = e.global_position)"
    ))
    .fetch_one(pool)
    .await
    .unwrap();
    let extra: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {applied} a
         WHERE NOT EXISTS (SELECT 1 FROM es_events e WHERE e.global_position = a.position)"
    ))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (missing, extra),
        (0, 0),
        "every committed event applied, nothing else"
    );
    let wrong_streams: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (
             SELECT stream_id, max(stream_version) AS version, sum((payload->>'n')::bigint) AS total
             FROM es_events WHERE event_type = 'Counted' GROUP BY stream_id) f
         FULL JOIN {streams} s USING (stream_id)
         WHERE s.version IS DISTINCT FROM f.version OR s.total IS DISTINCT FROM f.total"
    ))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(wrong_streams, 0, "the read model equals a fold of the log");
}

pub fn deadline(seconds: u64) -> Instant {
    Instant::now() + Duration::from_secs(seconds)
}

/// Runs `verify` and asserts it found every committed event delivered exactly once.
pub async fn assert_verified(worker: &es_projections::Worker, name: &str) {
    let report = es_projections::verify(worker, name).await.unwrap();
    assert!(report.ok(), "verify failed: {report}");
}

/// A worker running in a task until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), es_projections::ProjectionError>>,
}

/// Runs `worker` in a task.
pub fn spawn(worker: es_projections::Worker) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    Running { stop, handle }
}

impl Running {
    /// Whether the worker stopped by itself.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Shuts it down and asserts it ran without error.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }
}
