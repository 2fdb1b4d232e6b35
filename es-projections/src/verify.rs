//! `verify`: proves, without trusting the cursor, that a projection was delivered every
//! committed event up to its checkpoint, and names the first one it was not.
//!
//! What it relies on: every batch records the positions it delivered (applied, skipped as a
//! stream the projector does not read, or parked as a dead letter) in `es_applied_ranges`, as runs
//! of consecutive positions, in the same transaction as the batch's effects and its checkpoint
//! (`checkpoint::save`). So, in one snapshot, the ledger says exactly what the projection's
//! tables reflect. A committed event at or below the checkpoint's watermark that is in no run and
//! not in one of the cursor's holes (still awaited) was skipped by the reader; a position in two
//! runs was delivered twice. A missing event on a stream the projector does not read is counted
//! but not a failure.
//!
//! Cost: one repeatable-read, read-only transaction. It sums the runs and reads the events only
//! inside the gaps between runs (which are few: one per hole the reader ever had), streaming
//! them, so memory stays bounded whatever the size of the log.
//!
//! Limits: positions at or below `ledger_from` were applied before the ledger existed (a
//! database migrated from a version without it); a rebuild starts the ledger from zero and makes
//! the whole log verifiable.

use std::fmt;

use es_core::{GlobalPosition, StreamId, StreamVersion};
use futures::TryStreamExt;
use sqlx::Row;

use crate::checkpoint;
use crate::error::{EventLocation, ProjectionError};
use crate::worker::Worker;

/// How many missing events a report names.
const NAMED: usize = 10;

/// What `verify` found for a projection's live generation.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    /// The projection.
    pub projection: String,
    /// The live generation checked.
    pub generation: i32,
    /// Positions above this were checked.
    pub checked_from: GlobalPosition,
    /// Up to this position (the checkpoint's watermark).
    pub checked_to: GlobalPosition,
    /// Positions the ledger records as delivered in that range.
    pub delivered: i64,
    /// Positions still awaited in the cursor's holes (not failures).
    pub awaited: i64,
    /// The first committed events the projection reads that were never delivered (at most ten),
    /// each with its type and schema version as stored.
    pub missing: Vec<EventLocation>,
    /// How many such events there are in all.
    pub missing_count: u64,
    /// Missing events on streams the projector does not read (not failures).
    pub missing_ignored: u64,
    /// Ledger runs that overlap an earlier run: positions delivered twice (first, last).
    pub duplicated: Vec<(i64, i64)>,
    /// Whether the result was recorded for `status`: false when the role verifying may only
    /// read (it needs UPDATE on `es_projections`' verification columns: the monitor role).
    pub recorded: bool,
}

impl VerifyReport {
    /// Whether every committed event the projection reads was delivered exactly once.
    pub fn ok(&self) -> bool {
        self.missing_count == 0 && self.duplicated.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (generation {}): positions {}..={}: ",
            self.projection,
            self.generation,
            self.checked_from.0 + 1,
            self.checked_to
        )?;
        if self.ok() {
            write!(f, "ok, {} events delivered", self.delivered)?;
            if self.awaited > 0 {
                write!(f, ", {} positions awaited in holes", self.awaited)?;
            }
            return Ok(());
        }
        if self.missing_count > 0 {
            write!(f, "{} committed events never delivered", self.missing_count)?;
            if let Some(first) = self.missing.first() {
                write!(f, ", the first: {first}")?;
            }
        }
        if let Some((first, last)) = self.duplicated.first() {
            if self.missing_count > 0 {
                write!(f, "; ")?;
            }
            write!(f, "positions {first}..={last} delivered twice")?;
        }
        Ok(())
    }
}

/// Verifies the live generation of `name` (see the module docs) and records the result, which
/// `status` shows. An `Ok` report can still say the projection failed verification: check
/// [`VerifyReport::ok`].
///
/// ```no_run
/// # async fn demo(worker: es_projections::Worker) -> Result<(), es_projections::ProjectionError> {
/// let report = es_projections::verify(&worker, "deals").await?;
/// if !report.ok() {
///     eprintln!("{report}"); // names the first event the projection never saw
/// }
/// # Ok(()) }
/// ```
pub async fn verify(worker: &Worker, name: &str) -> Result<VerifyReport, ProjectionError> {
    let unit = worker
        .unit(name)
        .cloned()
        .ok_or_else(|| ProjectionError::UnknownProjection(name.to_string()))?;
    let pool = worker.pool();
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let Some(state) = checkpoint::verify_state(&mut tx, name).await? else {
        return Err(ProjectionError::NoCheckpoint(name.to_string()));
    };
    let (from, to) = (state.ledger_from, state.cursor.watermark.0);
    let delivered = checkpoint::ledger_delivered(&mut tx, name, state.generation, from, to).await?;
    let duplicated = checkpoint::ledger_overlaps(&mut tx, name, state.generation).await?;
    let starts: Vec<i64> = state.cursor.holes.iter().map(|h| h.start).collect();
    let ends: Vec<i64> = state.cursor.holes.iter().map(|h| h.end).collect();
    let mut missing = Vec::new();
    let (mut missing_count, mut missing_ignored) = (0u64, 0u64);
    {
        let query = checkpoint::ledger_missing(name, state.generation, from, to, &starts, &ends);
        let mut rows = query.fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let stream: String = row.try_get(1)?;
            let Ok(stream) = StreamId::from_stored(stream) else {
                missing_count += 1;
                continue;
            };
            if !unit.accepts_stream(&stream) {
                missing_ignored += 1;
                continue;
            }
            missing_count += 1;
            if missing.len() < NAMED {
                let version: i64 = row.try_get(2)?;
                let schema_version: i32 = row.try_get(4)?;
                missing.push(EventLocation {
                    stream,
                    stream_version: StreamVersion(version.max(0) as u64),
                    position: GlobalPosition(row.try_get(0)?),
                    event_type: row.try_get(3)?,
                    schema_version: schema_version.max(0) as u32,
                });
            }
        }
    }
    tx.commit().await?;
    let mut report = VerifyReport {
        projection: name.to_string(),
        generation: state.generation,
        checked_from: GlobalPosition(from),
        checked_to: GlobalPosition(to),
        delivered,
        awaited: state.cursor.hole_positions(),
        missing,
        missing_count,
        missing_ignored,
        duplicated,
        recorded: false,
    };
    // Best effort: a role that may only read (an operator's) verifies all the same; the result
    // is then not shown by `status`, and the caller is told through `recorded`.
    match checkpoint::record_verification(
        pool,
        name,
        state.generation,
        report.ok(),
        &report.to_string(),
    )
    .await
    {
        Ok(()) => report.recorded = true,
        Err(error) if es_postgres::error::is_permission_denied(&error) => {
            tracing::warn!(
                projection = name,
                "verification not recorded: this role may not update es_projections"
            );
        }
        Err(error) => return Err(error),
    }
    Ok(report)
}
