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
//! the live generation keeps serving. Once caught up the rebuild stops short of the switch: the
//! shadow is left `running`, and workers of its code version keep it caught up beside the live
//! one until an operator compares and switches it, or drops it ([`crate::generations`]). Asked to
//! ([`RebuildOptions::switch`]), the rebuild switches by itself.
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

use es_postgres::{log_head, LogCursor};
use sqlx::PgConnection;
use tracing::{info, warn};

use crate::checkpoint::{self, Lease, Role};
use crate::dead_letters;
use crate::engine::{apply_and_checkpoint, DynProjector, ErrorPolicy};
use crate::error::ProjectionError;
use crate::generations;
use crate::projector::Tables;
use crate::read_ahead::ReadAhead;
use crate::views;
use crate::worker::{default_owner, Worker};

/// Why a consumer is not rebuilt.
pub(crate) const REBUILD_REFUSED: &str = "its effects are outside the database, so a rebuild would repeat them; it has no tables to rebuild";

/// How to rebuild.
#[derive(Clone, Debug)]
pub struct RebuildOptions {
    /// Events per transaction.
    pub batch_size: usize,
    /// Build the next generation beside the live one, leaving it for workers to keep caught up
    /// until it is switched ([`crate::switch`]).
    pub shadow: bool,
    /// With `shadow`: switch to it as soon as it has caught up.
    pub switch: bool,
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
            switch: false,
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
    /// The generation rebuilt: live, or the shadow when it was not switched.
    pub generation: i32,
    /// Whether the rebuilt generation is live now (an in-place rebuild, or a shadow switched).
    pub live: bool,
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
    checkpoint::ensure_row(pool, name, "projection", projector.version()).await?;
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
    } else if !(options.shadow && options.switch
        || checkpoint::finish_rebuild(pool, &lease).await?)
    {
        return Err(fenced_out(&lease));
    }
    let report = RebuildReport {
        projection: name.to_string(),
        generation: lease.generation,
        live: !options.shadow || (options.switch && !interrupted),
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
    if options.shadow && options.switch {
        let (_, switched) = generations::switch_leased(
            worker,
            projector,
            lease,
            cursor,
            options,
            Role::Shadow,
            Role::Retired,
        )
        .await?;
        applied += switched;
    }
    Ok((applied, false))
}

/// Applies one batch of a rebuild and its checkpoint in `tx`, under the rebuild's policy and
/// lease; the events applied. Fenced out is an error: another process took the generation.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_fenced(
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

pub(crate) fn fenced_out(lease: &Lease) -> ProjectionError {
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
    if !checkpoint::reset_generation(&mut tx, &lease, projector.version()).await? {
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
    let Some(lease) = checkpoint::fence(pool, name, Role::Live, owner, REBUILD_TTL).await? else {
        return Err(checkpoint::lease_held(pool, name, Role::Live).await?);
    };
    if lease.state == "rebuilding" && !restart {
        if lease.code_version != projector.version() {
            checkpoint::release(pool, &lease).await?;
            return Err(version_mismatch(projector, &lease, "live"));
        }
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

/// Creates or resumes the shadow generation and takes its lease. A shadow already built (kept
/// caught up by workers) is built again only when asked to `restart`.
async fn take_shadow(
    worker: &Worker,
    projector: &dyn DynProjector,
    owner: &str,
    restart: bool,
) -> Result<(Lease, bool), ProjectionError> {
    let pool = worker.pool();
    let name = projector.name();
    checkpoint::create_shadow(pool, name, projector.version()).await?;
    let mut conn = pool.acquire().await?;
    let shadow = checkpoint::generations(&mut conn, name)
        .await?
        .into_iter()
        .find(|g| g.role == Role::Shadow.as_str());
    drop(conn);
    if let Some(built) = shadow.as_ref().filter(|g| g.state != "rebuilding") {
        if !restart {
            return Err(ProjectionError::Generations {
                projection: name.to_string(),
                reason: format!(
                    "the shadow generation {g} is built (workers keep it caught up): `compare {name}`, then `switch {name}`; or `rebuild {name} --shadow --restart` builds it again, `rebuild {name} --abandon` drops it",
                    g = built.generation
                ),
            });
        }
    }
    // A built shadow is held by a worker keeping it caught up: fenced out, like a live one.
    let Some(lease) = checkpoint::fence(pool, name, Role::Shadow, owner, REBUILD_TTL).await? else {
        return Err(checkpoint::lease_held(pool, name, Role::Shadow).await?);
    };
    let applied = shadow.map_or(0, |g| g.events_applied);
    let fresh = lease.cursor == LogCursor::default() && applied == 0;
    if !fresh && !restart {
        if lease.code_version != projector.version() {
            checkpoint::release(pool, &lease).await?;
            return Err(version_mismatch(projector, &lease, "shadow"));
        }
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

/// An interrupted rebuild left by another version of the code: resuming it with this code would
/// mix rows of two versions.
fn version_mismatch(
    projector: &dyn DynProjector,
    lease: &Lease,
    role: &'static str,
) -> ProjectionError {
    ProjectionError::VersionMismatch {
        projection: projector.name().to_string(),
        role,
        generation: lease.generation,
        built: lease.code_version,
        ours: projector.version(),
        hint: "resume the rebuild with a binary of that version, or start it over with --restart",
    }
}
