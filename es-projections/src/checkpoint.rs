//! The projection row (`es_projections`, also the checkpoint of reactors and publishers) and its
//! ledger (`es_applied_ranges`): the only code that reads or writes them. Its statements are in
//! `sql/`. A generation's dead letters (`crate::dead_letters`) are forgotten here with it, by
//! the same statement that resets or deletes it.
//!
//! **Leasing.** A worker or a rebuild applies a projection generation only while it holds the
//! row's lease (owner, expiry), taken with a compare-and-set that bumps the epoch. Every batch
//! is fenced twice, in its own transaction: after its read it locks the row if the lease is
//! still its own ([`hold`]), so nobody can bump the epoch while it applies, and its checkpoint
//! write updates the row only under that same lease ([`save`]). A stale holder (paused past its
//! lease, fenced out by a rebuild, or left behind by a shadow switch) therefore finds no row and
//! rolls its batch back instead of applying it twice. Leases are rows, not advisory locks, so
//! they work through transaction-pooling proxies and pin no connection.
//!
//! **Ledger.** [`save`] also records which positions the batch delivered, as runs of consecutive
//! positions, in the same transaction: `verify` checks the log against it without trusting the
//! cursor.
//!
//! Lease expiry is computed with `clock_timestamp()`, not `now()`: `now()` is the start of the
//! transaction, and a long batch would extend its lease from when it began.

use std::time::Duration;

use chrono::{DateTime, Utc};
use es_core::{GlobalPosition, StoreError};
use es_postgres::LogCursor;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::error::ProjectionError;

/// What a lease holder knows about its projection.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Lease {
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
    /// The version of the projector code the generation is built by.
    pub code_version: i32,
}

/// What a generation is to its projection. Readers see the live one (through views); a shadow
/// is being built or kept caught up beside it, ready for a switch; a retired one was live before
/// the last switch and is kept caught up for a rollback until it is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Live,
    Shadow,
    Retired,
}

impl Role {
    /// The stored name (`es_projections.role`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Shadow => "shadow",
            Role::Retired => "retired",
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Decodes the stored holes: the one decoder of the projection row's cursor. A cursor it cannot
/// read is an error, never "no holes" (that would skip them).
fn holes_from(row: &PgRow) -> Result<Vec<es_postgres::Hole>, ProjectionError> {
    let holes: serde_json::Value = row.try_get("holes")?;
    serde_json::from_value(holes).map_err(|e| {
        ProjectionError::Store(StoreError::storage(
            "the stored cursor of a projection is malformed (es_projections.holes)",
            false,
            e,
        ))
    })
}

fn cursor_from(row: &PgRow) -> Result<LogCursor, ProjectionError> {
    Ok(LogCursor {
        watermark: GlobalPosition(row.try_get("watermark")?),
        holes: holes_from(row)?,
    })
}

fn lease_from(row: &PgRow, owner: &str) -> Result<Lease, ProjectionError> {
    Ok(Lease {
        name: row.try_get("name")?,
        generation: row.try_get("generation")?,
        epoch: row.try_get("epoch")?,
        owner: owner.to_string(),
        cursor: cursor_from(row)?,
        state: row.try_get("state")?,
        code_version: row.try_get("code_version")?,
    })
}

fn holes_json(cursor: &LogCursor) -> Result<serde_json::Value, ProjectionError> {
    serde_json::to_value(&cursor.holes).map_err(|e| {
        ProjectionError::Store(StoreError::storage(
            "encoding a projection cursor",
            false,
            e,
        ))
    })
}

/// Creates the live row of a projection or consumer of `kind` (`projection`, `reactor`,
/// `publisher`), built by `code_version`, if it has none yet; fails when the name's row is of
/// another kind.
pub(crate) async fn ensure_row(
    pool: &PgPool,
    name: &str,
    kind: &str,
    code_version: i32,
) -> Result<(), ProjectionError> {
    let created: Option<String> = sqlx::query_scalar(include_str!("sql/ensure_row.sql"))
        .bind(name)
        .bind(kind)
        .bind(code_version)
        .fetch_optional(pool)
        .await?;
    let stored = match created {
        Some(stored) => stored,
        // Another process created the row while this statement ran: the insert waited for it
        // and did nothing, and the statement's snapshot, older than that commit, cannot see
        // it. A new statement can.
        None => {
            sqlx::query_scalar(include_str!("sql/kind_of.sql"))
                .bind(name)
                .fetch_one(pool)
                .await?
        }
    };
    if stored != kind {
        return Err(ProjectionError::KindMismatch {
            name: name.to_string(),
            registered: kind.to_string(),
            stored,
        });
    }
    Ok(())
}

/// Takes the lease of the generation of `role` if it is free, expired, or already ours, and it
/// is built by `code_version` (None: any, for consumers). A failed generation is taken (and set
/// running again) only when `retry_failed`; one being rebuilt is left to its rebuild.
pub(crate) async fn acquire(
    pool: &PgPool,
    name: &str,
    role: Role,
    code_version: Option<i32>,
    owner: &str,
    ttl: Duration,
    retry_failed: bool,
) -> Result<Option<Lease>, ProjectionError> {
    let row = sqlx::query(include_str!("sql/acquire.sql"))
        .bind(name)
        .bind(owner)
        .bind(millis(ttl))
        .bind(retry_failed)
        .bind(role.as_str())
        .bind(code_version)
        .fetch_optional(pool)
        .await?;
    row.map(|r| lease_from(&r, owner)).transpose()
}

/// Extends the lease; false when it was lost (fenced or taken over).
pub(crate) async fn renew(
    pool: &PgPool,
    lease: &Lease,
    ttl: Duration,
) -> Result<bool, ProjectionError> {
    let updated = sqlx::query(include_str!("sql/renew.sql"))
        .bind(&lease.name)
        .bind(lease.generation)
        .bind(lease.epoch)
        .bind(&lease.owner)
        .bind(millis(ttl))
        .execute(pool)
        .await?;
    Ok(updated.rows_affected() == 1)
}

/// Locks the row for the rest of the batch's transaction if the lease is still ours; false when
/// it was lost: the caller must roll back. Run it after the batch's read (a row lock gives the
/// transaction an id, and the log reader bounds holes with an id taken after its read).
pub(crate) async fn hold(conn: &mut PgConnection, lease: &Lease) -> Result<bool, ProjectionError> {
    let row = sqlx::query(include_str!("sql/hold.sql"))
        .bind(&lease.name)
        .bind(lease.generation)
        .bind(lease.epoch)
        .bind(&lease.owner)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// Runs of consecutive positions, from positions in any order.
fn runs(positions: &[i64]) -> (Vec<i64>, Vec<i64>) {
    let mut sorted = positions.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let (mut firsts, mut lasts) = (Vec::new(), Vec::<i64>::new());
    for p in sorted {
        match lasts.last_mut() {
            Some(last) if *last + 1 == p => *last = p,
            _ => {
                firsts.push(p);
                lasts.push(p);
            }
        }
    }
    (firsts, lasts)
}

/// What a batch wrote, for its checkpoint.
pub(crate) struct BatchRecord<'a> {
    /// The cursor after the batch.
    pub cursor: &'a LogCursor,
    /// The positions of every event the batch delivered (applied, skipped or parked).
    pub delivered: &'a [i64],
    /// How many the projector applied.
    pub applied: usize,
    /// The newest event's time.
    pub last_event_at: Option<DateTime<Utc>>,
}

/// Stores the cursor after a batch and records its delivered positions in the ledger, fenced by
/// the lease, in the batch's transaction. Returns false when the lease was lost: the caller must
/// roll back.
pub(crate) async fn save(
    conn: &mut PgConnection,
    lease: &Lease,
    batch: BatchRecord<'_>,
    ttl: Duration,
) -> Result<bool, ProjectionError> {
    let (firsts, lasts) = runs(batch.delivered);
    let saved: i64 = sqlx::query_scalar(include_str!("sql/save_checkpoint.sql"))
        .bind(&lease.name)
        .bind(lease.generation)
        .bind(lease.epoch)
        .bind(&lease.owner)
        .bind(batch.cursor.watermark.0)
        .bind(holes_json(batch.cursor)?)
        .bind(i64::try_from(batch.applied).unwrap_or(i64::MAX))
        .bind(batch.last_event_at)
        .bind(millis(ttl))
        .bind(&firsts)
        .bind(&lasts)
        .fetch_one(conn)
        .await?;
    Ok(saved == 1)
}

async fn release_as(
    pool: &PgPool,
    lease: &Lease,
    state: Option<&str>,
) -> Result<bool, ProjectionError> {
    let released = sqlx::query(include_str!("sql/release.sql"))
        .bind(&lease.name)
        .bind(lease.generation)
        .bind(lease.epoch)
        .bind(&lease.owner)
        .bind(state)
        .execute(pool)
        .await?;
    Ok(released.rows_affected() == 1)
}

/// Gives the lease up so that a standby (or the same rebuild run again) takes over at once.
pub(crate) async fn release(pool: &PgPool, lease: &Lease) -> Result<(), ProjectionError> {
    release_as(pool, lease, None).await.map(|_| ())
}

/// Ends an in-place rebuild: the projection is `running` again and its lease free for workers.
/// False when the lease had been lost.
pub(crate) async fn finish_rebuild(pool: &PgPool, lease: &Lease) -> Result<bool, ProjectionError> {
    release_as(pool, lease, Some("running")).await
}

/// Records why the holder stopped and releases the lease, leaving the generation in `state`:
/// `failed` for a worker (other workers leave it alone until a worker process restarts),
/// `rebuilding` for a rebuild (the same command resumes it). False when the lease was lost.
pub(crate) async fn record_failure(
    pool: &PgPool,
    lease: &Lease,
    error: &str,
    state: &str,
) -> Result<bool, ProjectionError> {
    let updated = sqlx::query(include_str!("sql/record_failure.sql"))
        .bind(&lease.name)
        .bind(lease.generation)
        .bind(lease.epoch)
        .bind(&lease.owner)
        .bind(error)
        .bind(state)
        .execute(pool)
        .await?;
    Ok(updated.rows_affected() == 1)
}

/// Every name that has a checkpoint row.
pub(crate) async fn names(pool: &PgPool) -> Result<Vec<String>, ProjectionError> {
    Ok(sqlx::query_scalar(include_str!("sql/names.sql"))
        .fetch_all(pool)
        .await?)
}

/// The live generation as read-your-writes sees it.
pub(crate) struct LiveState {
    /// Where it stands.
    pub cursor: LogCursor,
    /// `failed` when it stopped on an error.
    pub state: String,
    /// That error.
    pub last_error: Option<String>,
}

/// The live generation's cursor and state, if the projection has a row.
pub(crate) async fn live_state(
    pool: &PgPool,
    name: &str,
) -> Result<Option<LiveState>, ProjectionError> {
    let row = sqlx::query(include_str!("sql/live_state.sql"))
        .bind(name)
        .fetch_optional(pool)
        .await?;
    row.map(|r| {
        Ok(LiveState {
            cursor: cursor_from(&r)?,
            state: r.try_get("state")?,
            last_error: r.try_get("last_error")?,
        })
    })
    .transpose()
}

// ---- rebuilds ----

/// Who holds a generation's lease, for an error that says when it can be taken.
pub(crate) async fn lease_held(
    pool: &PgPool,
    name: &str,
    role: Role,
) -> Result<ProjectionError, ProjectionError> {
    let row = sqlx::query(include_str!("sql/lease_holder.sql"))
        .bind(name)
        .bind(role.as_str())
        .fetch_optional(pool)
        .await?;
    let (owner, until, left) = match row {
        Some(r) => (
            r.try_get::<Option<String>, _>("owner")?,
            r.try_get::<Option<DateTime<Utc>>, _>("lease_expires_at")?,
            r.try_get::<Option<f64>, _>("seconds_left")?,
        ),
        None => (None, None, None),
    };
    Ok(ProjectionError::LeaseHeld {
        projection: name.to_string(),
        owner: match (owner, until, left) {
            (Some(owner), Some(until), Some(left)) => format!(
                "{owner} until {} (in {left:.0} s, unless it is released sooner)",
                until.format("%F %T UTC")
            ),
            (Some(owner), _, _) => owner,
            _ => "another process".into(),
        },
    })
}

/// Takes the lease of the generation of `role` for an operator's command, fencing out the worker
/// applying it (see `sql/fence.sql`); commits at once. None when there is no such generation or
/// a rebuild holds it.
pub(crate) async fn fence(
    pool: &PgPool,
    name: &str,
    role: Role,
    owner: &str,
    ttl: Duration,
) -> Result<Option<Lease>, ProjectionError> {
    let row = sqlx::query(include_str!("sql/fence.sql"))
        .bind(name)
        .bind(owner)
        .bind(millis(ttl))
        .bind(role.as_str())
        .fetch_optional(pool)
        .await?;
    row.map(|r| lease_from(&r, owner)).transpose()
}

/// Zeroes the leased generation's checkpoint and ledger and marks it `rebuilding` by
/// `code_version`, in the transaction that empties its tables. False when the lease was lost.
pub(crate) async fn reset_generation(
    conn: &mut PgConnection,
    lease: &Lease,
    code_version: i32,
) -> Result<bool, ProjectionError> {
    let reset: i64 = sqlx::query_scalar(include_str!("sql/reset_generation.sql"))
        .bind(&lease.name)
        .bind(lease.generation)
        .bind(lease.epoch)
        .bind(&lease.owner)
        .bind(code_version)
        .fetch_one(conn)
        .await?;
    Ok(reset == 1)
}

/// Creates the next generation as a shadow built by `code_version`, unless there is one.
pub(crate) async fn create_shadow(
    pool: &PgPool,
    name: &str,
    code_version: i32,
) -> Result<(), ProjectionError> {
    sqlx::query(include_str!("sql/create_shadow.sql"))
        .bind(name)
        .bind(code_version)
        .execute(pool)
        .await?;
    Ok(())
}

/// A generation as the blue/green commands see it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GenerationRow {
    pub generation: i32,
    pub role: String,
    pub state: String,
    pub code_version: i32,
    pub watermark: GlobalPosition,
    pub events_applied: i64,
    /// The holder of a current lease.
    pub owner: Option<String>,
}

/// Every generation of `name`, oldest first.
pub(crate) async fn generations(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Vec<GenerationRow>, ProjectionError> {
    let rows = sqlx::query(include_str!("sql/generations.sql"))
        .bind(name)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(GenerationRow {
                generation: r.try_get("generation")?,
                role: r.try_get("role")?,
                state: r.try_get("state")?,
                code_version: r.try_get("code_version")?,
                watermark: GlobalPosition(r.try_get("watermark")?),
                events_applied: r.try_get("events_applied")?,
                owner: r.try_get("owner")?,
            })
        })
        .collect()
}

/// Whether `generation` of `name` still has `role`.
pub(crate) async fn has_role(
    conn: &mut PgConnection,
    name: &str,
    generation: i32,
    role: Role,
) -> Result<bool, ProjectionError> {
    Ok(sqlx::query_scalar(include_str!("sql/has_role.sql"))
        .bind(name)
        .bind(generation)
        .bind(role.as_str())
        .fetch_one(conn)
        .await?)
}

/// Locks the live row for a switch or a rollback (waiting for a live batch in flight); its
/// generation.
pub(crate) async fn lock_live(conn: &mut PgConnection, name: &str) -> Result<i32, ProjectionError> {
    Ok(sqlx::query_scalar(include_str!("sql/lock_live.sql"))
        .bind(name)
        .fetch_one(conn)
        .await?)
}

/// Turns live generation `old` into `to` and makes the leased generation (now of role `from`)
/// live, in the transaction of a switch (`from` shadow, `to` retired) or a rollback (`from`
/// retired, `to` shadow). False when the lease was lost.
pub(crate) async fn swap_live(
    conn: &mut PgConnection,
    old: i32,
    to: Role,
    next: &Lease,
    from: Role,
) -> Result<bool, ProjectionError> {
    // The old one first: the unique index on the live role is checked as each row is written.
    sqlx::query(include_str!("sql/demote.sql"))
        .bind(&next.name)
        .bind(old)
        .bind(to.as_str())
        .execute(&mut *conn)
        .await?;
    let promoted = sqlx::query(include_str!("sql/promote.sql"))
        .bind(&next.name)
        .bind(next.generation)
        .bind(next.epoch)
        .bind(&next.owner)
        .bind(from.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(promoted.rows_affected() == 1)
}

/// Deletes the generations of `role` (`retired`, or an abandoned `shadow`) but `except`, with
/// their ledgers; returns their numbers so that their tables can be dropped.
pub(crate) async fn delete_generations(
    conn: &mut PgConnection,
    name: &str,
    role: Role,
    except: Option<i32>,
) -> Result<Vec<i32>, ProjectionError> {
    Ok(
        sqlx::query_scalar(include_str!("sql/delete_generations.sql"))
            .bind(name)
            .bind(role.as_str())
            .bind(except)
            .fetch_all(conn)
            .await?,
    )
}

// ---- status and verification ----

/// One generation's row as `status` shows it.
pub(crate) async fn status_rows(pool: &PgPool) -> Result<Vec<PgRow>, ProjectionError> {
    Ok(sqlx::query(include_str!("sql/status.sql"))
        .fetch_all(pool)
        .await?)
}

/// What `verify` checks a live generation against.
pub(crate) struct VerifyState {
    /// The live generation.
    pub generation: i32,
    /// Its cursor.
    pub cursor: LogCursor,
    /// Positions at or below this were applied before the ledger started.
    pub ledger_from: i64,
}

/// The live generation's checkpoint and ledger start, in `conn`'s snapshot.
pub(crate) async fn verify_state(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<VerifyState>, ProjectionError> {
    let row = sqlx::query(include_str!("sql/verify_state.sql"))
        .bind(name)
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(VerifyState {
            generation: r.try_get("generation")?,
            cursor: cursor_from(&r)?,
            ledger_from: r.try_get("ledger_from")?,
        })
    })
    .transpose()
}

/// How many positions in `(from, to]` the ledger records as delivered.
pub(crate) async fn ledger_delivered(
    conn: &mut PgConnection,
    name: &str,
    generation: i32,
    from: i64,
    to: i64,
) -> Result<i64, ProjectionError> {
    Ok(sqlx::query_scalar(include_str!("sql/verify_delivered.sql"))
        .bind(name)
        .bind(generation)
        .bind(from)
        .bind(to)
        .fetch_one(conn)
        .await?)
}

/// Ledger runs that overlap an earlier one (positions delivered twice), at most ten.
pub(crate) async fn ledger_overlaps(
    conn: &mut PgConnection,
    name: &str,
    generation: i32,
) -> Result<Vec<(i64, i64)>, ProjectionError> {
    let rows = sqlx::query(include_str!("sql/verify_overlaps.sql"))
        .bind(name)
        .bind(generation)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// The statement listing committed events in `(from, to]` that the ledger does not record and
/// that are not in `holes`, in position order (`global_position, stream_id, stream_version,
/// event_type`). The caller streams it.
pub(crate) fn ledger_missing<'q>(
    name: &'q str,
    generation: i32,
    from: i64,
    to: i64,
    hole_starts: &'q [i64],
    hole_ends: &'q [i64],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(include_str!("sql/verify_missing.sql"))
        .bind(name)
        .bind(generation)
        .bind(from)
        .bind(to)
        .bind(hole_starts)
        .bind(hole_ends)
}

/// Records a verification's result for `status`.
pub(crate) async fn record_verification(
    pool: &PgPool,
    name: &str,
    generation: i32,
    ok: bool,
    report: &str,
) -> Result<(), ProjectionError> {
    sqlx::query(include_str!("sql/record_verification.sql"))
        .bind(name)
        .bind(generation)
        .bind(ok)
        .bind(report)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn positions_become_runs() {
        assert_eq!(runs(&[]), (vec![], vec![]));
        assert_eq!(
            runs(&[7, 3, 4, 5, 9, 8, 12]),
            (vec![3, 7, 12], vec![5, 9, 12])
        );
    }
}
