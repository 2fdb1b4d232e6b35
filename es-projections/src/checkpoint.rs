//! The projection row: checkpoint and lease in one place (`es_projections`).
//!
//! Leasing: a worker applies a projection only while it holds the row's lease (owner, expiry),
//! taken with a compare-and-set that bumps the epoch. Every checkpoint write is fenced: it
//! updates the row only if the epoch and owner are still the ones the batch started with, in the
//! same transaction as the batch's effects. A stale holder (paused past its lease, or fenced out
//! by a rebuild) therefore rolls its batch back instead of applying it twice. Leases are rows,
//! not advisory locks, so they work through transaction-pooling proxies and pin no connection.

use std::time::Duration;

use chrono::{DateTime, Utc};
use es_postgres::LogCursor;
use sqlx::{PgConnection, PgPool, Row};

use crate::error::ProjectionError;

/// What a lease holder knows about its projection.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    /// The projection.
    pub name: String,
    /// The generation held (the live one, or a shadow being built).
    pub generation: i32,
    /// The epoch the lease was taken at: the fence for every checkpoint write.
    pub epoch: i64,
    /// Who holds it.
    pub owner: String,
    /// Where the projection stands.
    pub cursor: LogCursor,
    /// Its state when taken (`running` or `rebuilding`).
    pub state: String,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn cursor_from(row: &sqlx::postgres::PgRow) -> Result<LogCursor, ProjectionError> {
    let watermark: i64 = row.try_get("watermark")?;
    let holes: serde_json::Value = row.try_get("holes")?;
    let holes = serde_json::from_value(holes).map_err(|e| {
        ProjectionError::Store(es_core::StoreError::Storage {
            message: "stored projection holes are malformed".into(),
            transient: false,
            source: Box::new(e),
        })
    })?;
    Ok(LogCursor {
        watermark: es_core::GlobalPosition(watermark),
        holes,
    })
}

fn lease_from(row: &sqlx::postgres::PgRow, owner: &str) -> Result<Lease, ProjectionError> {
    Ok(Lease {
        name: row.try_get("name")?,
        generation: row.try_get("generation")?,
        epoch: row.try_get("epoch")?,
        owner: owner.to_string(),
        cursor: cursor_from(row)?,
        state: row.try_get("state")?,
    })
}

/// Creates the projection's live row if it has none yet.
pub async fn ensure_row(pool: &PgPool, name: &str) -> Result<(), ProjectionError> {
    sqlx::query("INSERT INTO es_projections (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// Takes the live generation's lease if it is free, expired, or already ours. A failed
/// projection is taken (and set running again) only when `retry_failed`; a projection being
/// rebuilt is left to its rebuild.
pub async fn acquire(
    pool: &PgPool,
    name: &str,
    owner: &str,
    ttl: Duration,
    retry_failed: bool,
) -> Result<Option<Lease>, ProjectionError> {
    let row = sqlx::query(
        "UPDATE es_projections
         SET owner = $2, epoch = epoch + 1, state = 'running',
             lease_expires_at = now() + $3 * interval '1 millisecond', updated_at = now()
         WHERE name = $1 AND role = 'live'
           AND (state = 'running' OR (state = 'failed' AND $4))
           AND (owner IS NULL OR owner = $2 OR lease_expires_at < now())
         RETURNING name, generation, epoch, watermark, holes, state",
    )
    .bind(name)
    .bind(owner)
    .bind(millis(ttl))
    .bind(retry_failed)
    .fetch_optional(pool)
    .await?;
    row.map(|r| lease_from(&r, owner)).transpose()
}

/// Extends the lease; false when it was lost (fenced or taken over).
pub async fn renew(pool: &PgPool, lease: &Lease, ttl: Duration) -> Result<bool, ProjectionError> {
    let updated = sqlx::query(
        "UPDATE es_projections SET lease_expires_at = now() + $5 * interval '1 millisecond'
         WHERE name = $1 AND generation = $2 AND epoch = $3 AND owner = $4",
    )
    .bind(&lease.name)
    .bind(lease.generation)
    .bind(lease.epoch)
    .bind(&lease.owner)
    .bind(millis(ttl))
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Stores the cursor after a batch, fenced by the lease's epoch, in the batch's transaction.
/// Returns false when the lease was lost: the caller must roll back.
pub async fn save(
    conn: &mut PgConnection,
    lease: &Lease,
    cursor: &LogCursor,
    applied: usize,
    last_event_at: Option<DateTime<Utc>>,
    ttl: Duration,
) -> Result<bool, ProjectionError> {
    let holes = serde_json::to_value(&cursor.holes).unwrap_or_else(|_| serde_json::json!([]));
    let updated = sqlx::query(
        "UPDATE es_projections
         SET watermark = $5, holes = $6, events_applied = events_applied + $7,
             last_event_at = coalesce($8, last_event_at),
             lease_expires_at = now() + $9 * interval '1 millisecond', updated_at = now()
         WHERE name = $1 AND generation = $2 AND epoch = $3 AND owner = $4",
    )
    .bind(&lease.name)
    .bind(lease.generation)
    .bind(lease.epoch)
    .bind(&lease.owner)
    .bind(cursor.watermark.0)
    .bind(holes)
    .bind(i64::try_from(applied).unwrap_or(i64::MAX))
    .bind(last_event_at)
    .bind(millis(ttl))
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Gives the lease up so that a standby takes over at once.
pub async fn release(pool: &PgPool, lease: &Lease) -> Result<(), ProjectionError> {
    release_as(pool, lease, None).await
}

/// Ends a rebuild: the projection is `running` again and its lease free for the workers.
pub async fn finish_rebuild(pool: &PgPool, lease: &Lease) -> Result<(), ProjectionError> {
    release_as(pool, lease, Some("running")).await
}

async fn release_as(
    pool: &PgPool,
    lease: &Lease,
    state: Option<&str>,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE es_projections
         SET owner = NULL, lease_expires_at = NULL, state = coalesce($5, state), updated_at = now()
         WHERE name = $1 AND generation = $2 AND epoch = $3 AND owner = $4",
    )
    .bind(&lease.name)
    .bind(lease.generation)
    .bind(lease.epoch)
    .bind(&lease.owner)
    .bind(state)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks the projection failed with its error and releases the lease; other workers leave a
/// failed projection alone until a worker process is restarted.
pub async fn record_failure(
    pool: &PgPool,
    lease: &Lease,
    error: &str,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE es_projections
         SET state = 'failed', last_error = $5, last_error_at = now(), owner = NULL,
             lease_expires_at = NULL, updated_at = now()
         WHERE name = $1 AND generation = $2 AND epoch = $3 AND owner = $4",
    )
    .bind(&lease.name)
    .bind(lease.generation)
    .bind(lease.epoch)
    .bind(&lease.owner)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// The live generation's cursor, if the projection has a row.
pub async fn live_cursor(pool: &PgPool, name: &str) -> Result<Option<LogCursor>, ProjectionError> {
    let row = sqlx::query(
        "SELECT watermark, holes FROM es_projections WHERE name = $1 AND role = 'live'",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    row.map(|r| cursor_from(&r)).transpose()
}
