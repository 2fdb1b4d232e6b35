//! Rebuilding a projection: from scratch in place, or as a shadow beside the live one.
//!
//! From scratch: one transaction truncates the projection's tables, zeroes its checkpoint and
//! marks it `rebuilding` (fencing out a live worker mid-batch); the replay then commits batch by
//! batch with the checkpoint, so an interrupted rebuild resumes where it stopped when run again.
//! Live workers leave a `rebuilding` projection alone; reads see it fill up.
//!
//! Shadow (blue/green): the next generation's tables are built from the start of the log while
//! the live generation keeps serving. Once caught up, one transaction locks both rows (waiting
//! for the live worker's batch in flight), applies the last events, points the views at the new
//! tables and promotes the shadow; the old tables are dropped after. Live workers follow the new
//! generation from its checkpoint. Resumable too.
//!
//! A rebuild stops on the first bad event whatever the worker's error policy.

use std::time::{Duration, Instant};

use es_postgres::{read_batch, LogBatch, LogCursor};
use sqlx::{PgConnection, Row};
use tracing::info;

use crate::checkpoint::{self, Lease};
use crate::engine::{DynProjector, ErrorPolicy};
use crate::error::ProjectionError;
use crate::projector::Tables;
use crate::read_ahead::ReadAhead;
use crate::views;
use crate::worker::{default_owner, Worker};

/// How to rebuild.
#[derive(Clone, Debug)]
pub struct RebuildOptions {
    /// Events per transaction.
    pub batch_size: usize,
    /// Build beside the live generation and switch at the end.
    pub shadow: bool,
    /// Start over even if an interrupted rebuild could resume.
    pub restart: bool,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_size: 5000,
            shadow: false,
            restart: false,
        }
    }
}

/// Progress, reported after every batch.
#[derive(Clone, Copy, Debug)]
pub struct RebuildProgress {
    /// The position reached.
    pub position: i64,
    /// The head of the log when last looked at.
    pub head: i64,
    /// Events applied by this run so far.
    pub applied: u64,
}

/// What a finished rebuild did.
#[derive(Clone, Debug)]
pub struct RebuildReport {
    /// The projection.
    pub projection: String,
    /// The generation now live.
    pub generation: i32,
    /// Whether it resumed an interrupted rebuild.
    pub resumed: bool,
    /// Events applied by this run.
    pub applied: u64,
    /// How long it took.
    pub elapsed: Duration,
}

const REBUILD_TTL: Duration = Duration::from_secs(60);

/// Rebuilds `name` (see the module docs), reporting progress after every batch.
pub async fn rebuild(
    worker: &Worker,
    name: &str,
    options: &RebuildOptions,
    mut progress: impl FnMut(RebuildProgress),
) -> Result<RebuildReport, ProjectionError> {
    let projector = worker
        .find(name)
        .cloned()
        .ok_or_else(|| ProjectionError::UnknownProjection(name.to_string()))?;
    let pool = worker.pool();
    let owner = format!("rebuild:{}", default_owner());
    checkpoint::ensure_row(pool, name).await?;
    let started = Instant::now();
    let (lease, resumed) = if options.shadow {
        take_shadow(worker, projector.as_ref(), &owner, options.restart).await?
    } else {
        take_live(worker, projector.as_ref(), &owner, options.restart).await?
    };
    let tables = Tables::new(projector.tables(), lease.generation)?;
    info!(
        projection = name,
        generation = lease.generation,
        resumed,
        shadow = options.shadow,
        "rebuilding"
    );
    let mut cursor = lease.cursor.clone();
    let mut applied = 0u64;
    let mut head = head_position(pool).await?;
    // The next batch is read while this one is applied (see `read_ahead`).
    let mut batches = ReadAhead::start(pool.clone(), cursor.clone(), options.batch_size);
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let mut tx = pool.begin().await?;
        let next = batch.next.clone();
        let n = store_batch(&mut tx, worker, projector.as_ref(), &tables, &lease, batch).await?;
        tx.commit().await?;
        cursor = next;
        applied += n as u64;
        if cursor.watermark.0 >= head {
            head = head_position(pool).await?;
        }
        progress(RebuildProgress {
            position: cursor.watermark.0,
            head,
            applied,
        });
    }
    drop(batches);
    let generation = if options.shadow {
        applied += switch(
            worker,
            projector.as_ref(),
            &tables,
            &lease,
            cursor,
            options.batch_size,
        )
        .await?;
        lease.generation
    } else {
        checkpoint::finish_rebuild(pool, &lease).await?;
        lease.generation
    };
    let report = RebuildReport {
        projection: name.to_string(),
        generation,
        resumed,
        applied,
        elapsed: started.elapsed(),
    };
    info!(projection = name, generation, applied, elapsed = ?report.elapsed, "rebuild finished");
    Ok(report)
}

/// Reads and applies one batch in `tx` and saves the checkpoint; None when there was nothing.
async fn apply_one_batch(
    tx: &mut PgConnection,
    worker: &Worker,
    projector: &dyn DynProjector,
    tables: &Tables,
    lease: &Lease,
    cursor: &LogCursor,
    batch_size: usize,
) -> Result<(Option<LogCursor>, usize), ProjectionError> {
    let batch = read_batch(tx, cursor, batch_size).await?;
    if batch.is_idle(cursor) {
        return Ok((None, 0));
    }
    let next = batch.next.clone();
    let applied = store_batch(tx, worker, projector, tables, lease, batch).await?;
    Ok((Some(next), applied))
}

/// Applies `batch` in `tx` and saves the cursor after it; returns the events applied.
async fn store_batch(
    tx: &mut PgConnection,
    worker: &Worker,
    projector: &dyn DynProjector,
    tables: &Tables,
    lease: &Lease,
    batch: LogBatch,
) -> Result<usize, ProjectionError> {
    let last_event_at = batch.events.iter().map(|e| e.recorded_at).max();
    let outcome = projector
        .apply_batch(
            tx,
            tables,
            worker.upcasters(),
            batch.events,
            ErrorPolicy::Stop,
        )
        .await?;
    if !checkpoint::save(
        tx,
        lease,
        &batch.next,
        outcome.applied,
        last_event_at,
        REBUILD_TTL,
    )
    .await?
    {
        return Err(ProjectionError::LeaseHeld {
            projection: lease.name.clone(),
            owner: "another process (the rebuild was fenced out)".into(),
        });
    }
    Ok(outcome.applied)
}

async fn head_position(pool: &sqlx::PgPool) -> Result<i64, ProjectionError> {
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM es_events")
            .fetch_one(pool)
            .await?,
    )
}

fn lease_of(row: &sqlx::postgres::PgRow, owner: &str) -> Result<Lease, ProjectionError> {
    let holes: serde_json::Value = row.try_get("holes")?;
    Ok(Lease {
        name: row.try_get("name")?,
        generation: row.try_get("generation")?,
        epoch: row.try_get("epoch")?,
        owner: owner.to_string(),
        cursor: LogCursor {
            watermark: es_core::GlobalPosition(row.try_get("watermark")?),
            holes: serde_json::from_value(holes).unwrap_or_default(),
        },
        state: row.try_get("state")?,
    })
}

/// Creates a generation's tables if needed and empties them.
async fn setup_and_reset(
    conn: &mut PgConnection,
    projector: &dyn DynProjector,
    tables: &Tables,
) -> Result<(), ProjectionError> {
    let fail = |action| {
        move |source| ProjectionError::Projector {
            projection: projector.name().to_string(),
            action,
            source,
        }
    };
    projector.setup(conn, tables).await.map_err(fail("setup"))?;
    projector.reset(conn, tables).await.map_err(fail("reset"))
}

/// Takes the live row for an in-place rebuild: resets it unless an interrupted rebuild can
/// resume.
async fn take_live(
    worker: &Worker,
    projector: &dyn DynProjector,
    owner: &str,
    restart: bool,
) -> Result<(Lease, bool), ProjectionError> {
    let pool = worker.pool();
    let name = projector.name();
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT generation, state, owner, lease_expires_at > now() AS leased
         FROM es_projections WHERE name = $1 AND role = 'live' FOR UPDATE",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    let state: String = row.try_get("state")?;
    let holder: Option<String> = row.try_get("owner")?;
    let leased: Option<bool> = row.try_get("leased")?;
    let generation: i32 = row.try_get("generation")?;
    if state == "rebuilding" && leased == Some(true) {
        return Err(ProjectionError::LeaseHeld {
            projection: name.to_string(),
            owner: holder.unwrap_or_default(),
        });
    }
    let tables = Tables::new(projector.tables(), generation)?;
    let resume = state == "rebuilding" && !restart;
    if !resume {
        setup_and_reset(&mut tx, projector, &tables).await?;
        views::point_views(&mut tx, &tables).await?;
        sqlx::query(
            "UPDATE es_projections SET watermark = 0, holes = '[]', events_applied = 0,
                 last_event_at = NULL, last_error = NULL, last_error_at = NULL
             WHERE name = $1 AND role = 'live'",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
    }
    // Bumping the epoch fences out a live worker: its next checkpoint write fails and rolls back.
    let row = sqlx::query(
        "UPDATE es_projections
         SET state = 'rebuilding', epoch = epoch + 1, owner = $2,
             lease_expires_at = now() + interval '60 seconds', updated_at = now()
         WHERE name = $1 AND role = 'live'
         RETURNING name, generation, epoch, watermark, holes, state",
    )
    .bind(name)
    .bind(owner)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((lease_of(&row, owner)?, resume))
}

/// Creates or resumes the shadow generation and takes its lease.
async fn take_shadow(
    worker: &Worker,
    projector: &dyn DynProjector,
    owner: &str,
    restart: bool,
) -> Result<(Lease, bool), ProjectionError> {
    let pool = worker.pool();
    let name = projector.name();
    let live: i32 = sqlx::query_scalar(
        "SELECT generation FROM es_projections WHERE name = $1 AND role = 'live'",
    )
    .bind(name)
    .fetch_one(pool)
    .await?;
    let max: i32 = sqlx::query_scalar("SELECT max(generation) FROM es_projections WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await?;
    sqlx::query(
        "INSERT INTO es_projections (name, generation, role, state) VALUES ($1, $2, 'shadow', 'rebuilding')
         ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .bind(max.max(live) + 1)
    .execute(pool)
    .await?;
    let row = sqlx::query(
        "UPDATE es_projections
         SET epoch = epoch + 1, owner = $2, lease_expires_at = now() + interval '60 seconds', updated_at = now()
         WHERE name = $1 AND role = 'shadow' AND (owner IS NULL OR owner = $2 OR lease_expires_at < now())
         RETURNING name, generation, epoch, watermark, holes, state, events_applied",
    )
    .bind(name)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Err(ProjectionError::LeaseHeld {
            projection: name.to_string(),
            owner: "another shadow rebuild".into(),
        });
    };
    let lease = lease_of(&row, owner)?;
    let fresh = lease.cursor == LogCursor::default();
    let tables = Tables::new(projector.tables(), lease.generation)?;
    if fresh || restart {
        let mut tx = pool.begin().await?;
        setup_and_reset(&mut tx, projector, &tables).await?;
        sqlx::query(
            "UPDATE es_projections SET watermark = 0, holes = '[]', events_applied = 0
             WHERE name = $1 AND generation = $2",
        )
        .bind(name)
        .bind(lease.generation)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let lease = Lease {
            cursor: LogCursor::default(),
            ..lease
        };
        return Ok((lease, false));
    }
    Ok((lease, true))
}

/// Catches the shadow up under lock and promotes it; returns the events applied meanwhile.
async fn switch(
    worker: &Worker,
    projector: &dyn DynProjector,
    tables: &Tables,
    lease: &Lease,
    mut cursor: LogCursor,
    batch_size: usize,
) -> Result<u64, ProjectionError> {
    let pool = worker.pool();
    let name = projector.name();
    let mut tx = pool.begin().await?;
    // Waits for the live worker's batch in flight; blocks its next one until we commit.
    let old: i32 = sqlx::query_scalar(
        "SELECT generation FROM es_projections WHERE name = $1 AND role = 'live' FOR UPDATE",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    let mut applied = 0u64;
    loop {
        let (next, n) = apply_one_batch(
            &mut tx, worker, projector, tables, lease, &cursor, batch_size,
        )
        .await?;
        let Some(next) = next else { break };
        cursor = next;
        applied += n as u64;
    }
    views::point_views(&mut tx, tables).await?;
    sqlx::query(
        "UPDATE es_projections SET role = 'retired', epoch = epoch + 1, owner = NULL, lease_expires_at = NULL
         WHERE name = $1 AND generation = $2",
    )
    .bind(name)
    .bind(old)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE es_projections
         SET role = 'live', state = 'running', epoch = epoch + 1, owner = NULL, lease_expires_at = NULL, updated_at = now()
         WHERE name = $1 AND generation = $2",
    )
    .bind(name)
    .bind(lease.generation)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    info!(
        projection = name,
        from = old,
        to = lease.generation,
        "switched to the new generation"
    );
    let mut tx = pool.begin().await?;
    views::drop_tables(&mut tx, &Tables::new(projector.tables(), old)?).await?;
    sqlx::query("DELETE FROM es_projections WHERE name = $1 AND role = 'retired'")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(applied)
}
