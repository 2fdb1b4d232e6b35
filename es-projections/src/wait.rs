//! Read-your-writes: wait until a projection has applied a position returned by an append.

use std::time::{Duration, Instant};

use es_core::GlobalPosition;
use sqlx::PgPool;

use crate::checkpoint;
use crate::error::ProjectionError;

/// How long [`wait_for`] waits for a projection's checkpoint to exist before it says that no
/// worker runs it: a worker started at the same time creates it within milliseconds.
pub const NOT_STARTED_GRACE: Duration = Duration::from_secs(5);

/// Waits until the live generation of `projection` covers `position` (the event there, and
/// every event before it that committed, have been applied), or `timeout` passes. Returns
/// [`ProjectionError::Failed`] at once when the projection has stopped on an error: it will not
/// get there by itself; and [`ProjectionError::NotStarted`] when no projection of that name has
/// a checkpoint after [`NOT_STARTED_GRACE`] (a misspelt name, or no worker running it), naming
/// those that have one. [`Worker::wait_for`](crate::Worker::wait_for) also refuses a name the
/// worker does not register, at once.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, position: es_core::GlobalPosition) -> Result<(), es_projections::ProjectionError> {
/// use std::time::Duration;
/// es_projections::wait_for(&pool, "deals", position, Duration::from_secs(5)).await?;
/// // The deals view now reflects the append that returned `position`.
/// # Ok(()) }
/// ```
pub async fn wait_for(
    pool: &PgPool,
    projection: &str,
    position: GlobalPosition,
    timeout: Duration,
) -> Result<(), ProjectionError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        let state = checkpoint::live_state(pool, projection).await?;
        if state.is_none() && started.elapsed() >= NOT_STARTED_GRACE.min(timeout) {
            return Err(ProjectionError::NotStarted {
                projection: projection.to_string(),
                known: checkpoint::names(pool).await?,
            });
        }
        if let Some(live) = state {
            if live.cursor.covers(position) {
                return Ok(());
            }
            if live.state == "failed" {
                return Err(ProjectionError::Failed {
                    projection: projection.to_string(),
                    error: live.last_error.unwrap_or_default(),
                });
            }
        }
        if started.elapsed() >= timeout {
            return Err(ProjectionError::Timeout {
                projection: projection.to_string(),
                position,
                timeout,
            });
        }
        tokio::time::sleep(pause.min(timeout.saturating_sub(started.elapsed()))).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Where the live generation of `projection` stands (None before it has a row): its watermark
/// and holes. [`LogCursor::covers`](es_postgres::LogCursor::covers) says whether a position has
/// been applied.
pub async fn live_cursor(
    pool: &PgPool,
    projection: &str,
) -> Result<Option<es_postgres::LogCursor>, ProjectionError> {
    Ok(checkpoint::live_state(pool, projection)
        .await?
        .map(|live| live.cursor))
}
