//! Rebuilding a projection: from scratch in place, or as a shadow beside the live one.
//!
//! From scratch (in place): first a short transaction takes the live generation's lease, bumping
//! its epoch, which fences out a live worker (a batch it holds is waited for and commits first;
//! its next one finds the lease gone and rolls back). Then one transaction empties the tables,
//! zeroes the checkpoint and ledger and marks the projection `rebuilding`. Taking the lease and
//! emptying the tables are separate so that the rebuild never holds the projection row while
//! waiting for the worker's table locks (and the worker never waits for the row while holding
//! them): no deadlock. The replay then commits batch by batch with the checkpoint. Live workers
//! leave a `rebuilding` projection alone; reads see it fill up.
//!
//! Shadow (blue/green): the next generation's tables are built from the start of the log while
//! the live generation keeps serving. Once caught up, one transaction locks the live row
//! (waiting for the live worker's batch in flight), applies the last events, points the views at
//! the new tables, retires the old generation and promotes the shadow; the old tables are dropped
//! after. A live worker finds its generation retired at its next batch, before applying anything,
//! and follows the new one from its checkpoint.
//!
//! Interrupted ([`rebuild_until`]'s `stop`, Ctrl-C in the CLI): the batch in flight commits, the
//! lease is released, and the same command resumes at once. Killed: the lease expires after
//! [`REBUILD_TTL`]; until then a new run says when it can resume. Failed on a bad event: the
//! error is recorded (`status` shows it), the lease released and the projection left
//! `rebuilding` (in place) or the shadow left beside the live one, so that the same command
//! resumes once the cause is fixed, or `--abandon` drops a shadow. A rebuild stops on the first
//! bad event unless asked to park bad events ([`RebuildOptions::error_policy`]).

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use es_postgres::{log_head, read_batch, LogCursor};
use sqlx::PgConnection;
use tracing::{info, warn};

use crate::checkpoint::{self, Lease};
use crate::dead_letters;
use crate::engine::{apply_and_checkpoint, DynProjector, ErrorPolicy};
use crate::error::ProjectionError;
use crate::projector::Tables;
use crate::read_ahead::ReadAhead;
use crate::views;
use crate::worker::{default_owner, Worker};

/// Why a consumer is not rebuilt.
const REBUILD_REFUSED: &str = "its effects are outside the database, so a rebuild would repeat them; it has no tables to rebuild";

/// How to rebuild.
#[derive(Clone, Debug)]
pub struct RebuildOptions {
    /// Events per transaction.
    pub batch_size: usize,
    /// Build beside the live generation and switch at the end.
    pub shadow: bool,
    /// Start over even if an interrupted rebuild could resume.
    pub restart: bool,
    /// What to do with a bad event: stop (default), or park it in the dead letters and go on.
    pub error_policy: ErrorPolicy,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_size: 5000,
            shadow: false,
            restart: false,
            error_policy: ErrorPolicy::Stop,
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
    /// Whether it was interrupted (by `stop`) before finishing: run it again to resume.
    pub interrupted: bool,
    /// Events applied by this run.
    pub applied: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// How long a rebuild's lease lasts without a batch: a killed rebuild can be resumed this long
/// after it died (an interrupted one at once).
pub const REBUILD_TTL: Duration = Duration::from_secs(30);

/// Rebuilds `name` (see the module docs), reporting progress after every batch.
pub async fn rebuild(
    worker: &Worker,
    name: &str,
    options: &RebuildOptions,
    progress: impl FnMut(RebuildProgress),
) -> Result<RebuildReport, ProjectionError> {
    rebuild_until(worker, name, options, progress, std::future::pending()).await
}

/// Rebuilds `name` until it is done or `stop` completes; then the batch in flight commits, the
/// lease is released and the report says `interrupted`: the same call resumes.
pub async fn rebuild_until(
    worker: &Worker,
    name: &str,
    options: &RebuildOptions,
    mut progress: impl FnMut(RebuildProgress),
    stop: impl Future<Output = ()>,
) -> Result<RebuildReport, ProjectionError> {
    let projector = worker.projector(name, REBUILD_REFUSED)?.clone();
    worker.check_stored().await?;
    let pool = worker.pool();
    let owner = format!("rebuild:{}", default_owner());
    checkpoint::ensure_row(pool, name, "projection").await?;
    let started = Instant::now();
    let (lease, resumed) = if options.shadow {
        take_shadow(worker, projector.as_ref(), &owner, options.restart).await?
    } else {
        take_live(worker, projector.as_ref(), &owner, options.restart).await?
    };
    info!(
        projection = name,
        generation = lease.generation,
        resumed,
        shadow = options.shadow,
        "rebuilding"
    );
    let replayed = replay(
        worker,
        projector.as_ref(),
        &lease,
        options,
        &mut progress,
        stop,
    )
    .await;
    let (applied, interrupted) = match replayed {
        Ok(done) => done,
        Err(error) => {
            warn!(projection = name, generation = lease.generation, %error, "rebuild stopped");
            if let Err(e) =
                checkpoint::record_failure(pool, &lease, &error.to_string(), "rebuilding").await
            {
                warn!(projection = name, error = %e, "could not record the rebuild's failure");
            }
            return Err(error);
        }
    };
    if interrupted {
        checkpoint::release(pool, &lease).await?;
        info!(
            projection = name,
            applied, "rebuild interrupted; run it again to resume"
        );
    } else if !options.shadow && !checkpoint::finish_rebuild(pool, &lease).await? {
        return Err(fenced_out(&lease));
    }
    let report = RebuildReport {
        projection: name.to_string(),
        generation: lease.generation,
        resumed,
        interrupted,
        applied,
        elapsed: started.elapsed(),
    };
    if !interrupted {
        info!(projection = name, generation = lease.generation, applied, elapsed = ?report.elapsed, "rebuild finished");
    }
    Ok(report)
}

/// Replays the log into the leased generation and, for a shadow, switches; returns the events
/// applied and whether `stop` interrupted it.
async fn replay(
    worker: &Worker,
    projector: &dyn DynProjector,
    lease: &Lease,
    options: &RebuildOptions,
    progress: &mut impl FnMut(RebuildProgress),
    stop: impl Future<Output = ()>,
) -> Result<(u64, bool), ProjectionError> {
    let pool = worker.pool();
    let tables = Tables::new(projector.tables(), lease.generation)?;
    let mut cursor = lease.cursor.clone();
    let mut applied = 0u64;
    let mut head = log_head(pool).await?.0;
    let mut blocked = dead_letters::open_streams(pool, &lease.name, lease.generation).await?;
    // The next batch is read while this one is applied (see `read_ahead`).
    let mut batches = ReadAhead::start(pool.clone(), cursor.clone(), options.batch_size);
    tokio::pin!(stop);
    loop {
        let batch = tokio::select! {
            biased;
            _ = &mut stop => return Ok((applied, true)),
            batch = batches.next() => batch,
        };
        let Some(batch) = batch else { break };
        let batch = batch?;
        let next = batch.next.clone();
        // A batch that is not full reached the head of the log: the replay has caught up. With
        // writers appending all the time an idle batch may never come; what arrives from here on
        // is the live worker's (in place) or the switch's (shadow).
        let caught_up = batch.events.len() < options.batch_size.max(1);
        let mut tx = pool.begin().await?;
        let applied_now = apply_fenced(
            &mut tx,
            worker,
            projector,
            &tables,
            lease,
            batch,
            options,
            &mut blocked,
        )
        .await?;
        tx.commit().await?;
        cursor = next;
        applied += applied_now;
        if cursor.watermark.0 >= head {
            head = log_head(pool).await?.0;
        }
        progress(RebuildProgress {
            position: cursor.watermark.0,
            head,
            applied,
        });
        if caught_up {
            break;
        }
    }
    drop(batches);
    if options.shadow {
        applied += switch(worker, projector, &tables, lease, cursor, options).await?;
    }
    Ok((applied, false))
}

/// Applies one batch of a rebuild and its checkpoint in `tx`, under the rebuild's policy and
/// lease; the events applied. Fenced out is an error: another process took the generation.
#[allow(clippy::too_many_arguments)]
async fn apply_fenced(
    tx: &mut PgConnection,
    worker: &Worker,
    projector: &dyn DynProjector,
    tables: &Tables,
    lease: &Lease,
    batch: es_postgres::LogBatch,
    options: &RebuildOptions,
    blocked: &mut HashSet<es_core::StreamId>,
) -> Result<u64, ProjectionError> {
    let outcome = apply_and_checkpoint(
        tx,
        projector,
        tables,
        worker.upcasters(),
        lease,
        batch,
        options.error_policy,
        REBUILD_TTL,
        blocked,
    )
    .await?
    .ok_or_else(|| fenced_out(lease))?;
    Ok(outcome.applied as u64)
}

fn fenced_out(lease: &Lease) -> ProjectionError {
    ProjectionError::LeaseHeld {
        projection: lease.name.clone(),
        owner: "another process (the rebuild was fenced out)".into(),
    }
}

/// Creates a generation's tables if needed and empties them.
async fn setup_and_reset(
    conn: &mut PgConnection,
    projector: &dyn DynProjector,
    tables: &Tables,
) -> Result<(), ProjectionError> {
    let fail = |action| move |source| ProjectionError::projector(projector.name(), action, source);
    projector.setup(conn, tables).await.map_err(fail("setup"))?;
    projector.reset(conn, tables).await.map_err(fail("reset"))
}

/// Empties the leased generation's tables and zeroes its checkpoint, in one transaction.
async fn reset(
    worker: &Worker,
    projector: &dyn DynProjector,
    lease: Lease,
    point_views: bool,
) -> Result<Lease, ProjectionError> {
    let tables = Tables::new(projector.tables(), lease.generation)?;
    let mut tx = worker.pool().begin().await?;
    views::lock_ddl(&mut tx, projector.name()).await?;
    setup_and_reset(&mut tx, projector, &tables).await?;
    if point_views {
        views::point_views(&mut tx, &tables).await?;
    }
    if !checkpoint::reset_generation(&mut tx, &lease).await? {
        return Err(fenced_out(&lease));
    }
    tx.commit().await?;
    Ok(Lease {
        cursor: LogCursor::default(),
        state: "rebuilding".into(),
        ..lease
    })
}

/// Takes the live generation for an in-place rebuild: resets it unless an interrupted rebuild
/// can resume.
async fn take_live(
    worker: &Worker,
    projector: &dyn DynProjector,
    owner: &str,
    restart: bool,
) -> Result<(Lease, bool), ProjectionError> {
    let pool = worker.pool();
    let name = projector.name();
    let Some(lease) = checkpoint::fence_for_rebuild(pool, name, owner, REBUILD_TTL).await? else {
        return Err(checkpoint::lease_held(pool, name, "live").await?);
    };
    if lease.state == "rebuilding" && !restart {
        return Ok((lease, true));
    }
    match reset(worker, projector, lease.clone(), true).await {
        Ok(lease) => Ok((lease, false)),
        Err(error) => {
            // Nothing was reset (one transaction): give the projection back to its workers.
            checkpoint::release(pool, &lease).await?;
            Err(error)
        }
    }
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
    let Some((lease, applied)) = checkpoint::lease_shadow(pool, name, owner, REBUILD_TTL).await?
    else {
        return Err(checkpoint::lease_held(pool, name, "shadow").await?);
    };
    let fresh = lease.cursor == LogCursor::default() && applied == 0;
    if !fresh && !restart {
        return Ok((lease, true));
    }
    match reset(worker, projector, lease.clone(), false).await {
        Ok(lease) => Ok((lease, false)),
        Err(error) => {
            checkpoint::release(pool, &lease).await?;
            Err(error)
        }
    }
}

/// Catches the shadow up under the live row's lock and promotes it; returns the events applied
/// meanwhile.
async fn switch(
    worker: &Worker,
    projector: &dyn DynProjector,
    tables: &Tables,
    lease: &Lease,
    mut cursor: LogCursor,
    options: &RebuildOptions,
) -> Result<u64, ProjectionError> {
    let pool = worker.pool();
    let name = projector.name();
    let mut tx = pool.begin().await?;
    // The projection's DDL lock first, as every DDL path takes it before any row: an in-place
    // reset (DDL lock, then the live row) cannot wait on us in a cycle.
    views::lock_ddl(&mut tx, name).await?;
    // Waits for the live worker's batch in flight; keeps its next one out until we commit. The
    // lock gives this transaction an id, so holes found by the reads below stay unbounded until
    // the new generation's worker reads (see es_postgres::log_reader).
    let old = checkpoint::lock_live(&mut tx, name).await?;
    // Catch up to the head as it is now, not to a head that writers keep moving: what commits
    // after is the new generation's worker's to apply.
    let head = log_head(&mut *tx).await?.0;
    let mut applied = 0u64;
    let mut blocked = dead_letters::open_streams(pool, name, lease.generation).await?;
    while cursor.watermark.0 < head {
        let batch = read_batch(&mut tx, &cursor, options.batch_size).await?;
        if batch.is_idle(&cursor) {
            break;
        }
        let next = batch.next.clone();
        let applied_now = apply_fenced(
            &mut tx,
            worker,
            projector,
            tables,
            lease,
            batch,
            options,
            &mut blocked,
        )
        .await?;
        cursor = next;
        applied += applied_now;
    }
    views::point_views(&mut tx, tables).await?;
    if !checkpoint::promote(&mut tx, old, lease).await? {
        return Err(fenced_out(lease));
    }
    tx.commit().await?;
    info!(
        projection = name,
        from = old,
        to = lease.generation,
        "switched to the new generation"
    );
    // The switch is done; dropping the old tables may wait on a long reader of them. If it
    // fails, the retired generation is dropped by the next switch.
    if let Err(error) = drop_retired(pool, projector).await {
        warn!(projection = name, %error, "the old generation's tables were not dropped yet");
    }
    Ok(applied)
}

/// Drops the retired generations' tables and rows.
async fn drop_retired(
    pool: &sqlx::PgPool,
    projector: &dyn DynProjector,
) -> Result<(), ProjectionError> {
    let name = projector.name();
    let mut tx = pool.begin().await?;
    views::lock_ddl(&mut tx, name).await?;
    for generation in checkpoint::delete_generations(&mut tx, name, "retired").await? {
        views::drop_tables(&mut tx, &Tables::new(projector.tables(), generation)?).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Drops an unfinished shadow generation (after a failed or unwanted shadow rebuild): its tables,
/// its row and its ledger. Refused while a shadow rebuild holds it. Returns the generation
/// dropped, if there was one.
pub async fn abandon_shadow(worker: &Worker, name: &str) -> Result<Option<i32>, ProjectionError> {
    let projector = worker.projector(name, REBUILD_REFUSED)?.clone();
    let pool = worker.pool();
    if !checkpoint::has_shadow(pool, name).await? {
        return Ok(None);
    }
    let owner = format!("abandon:{}", default_owner());
    let Some((lease, _)) = checkpoint::lease_shadow(pool, name, &owner, REBUILD_TTL).await? else {
        return Err(checkpoint::lease_held(pool, name, "shadow").await?);
    };
    let mut tx = pool.begin().await?;
    views::lock_ddl(&mut tx, name).await?;
    for generation in checkpoint::delete_generations(&mut tx, name, "shadow").await? {
        views::drop_tables(&mut tx, &Tables::new(projector.tables(), generation)?).await?;
    }
    tx.commit().await?;
    info!(
        projection = name,
        generation = lease.generation,
        "shadow generation abandoned"
    );
    Ok(Some(lease.generation))
}
