//! Read-your-writes: wait until a projection has applied a position returned by an append.

use std::time::{Duration, Instant};

use es_core::GlobalPosition;
use sqlx::PgPool;

use crate::checkpoint;
use crate::error::ProjectionError;

/// Waits until the live generation of `projection` covers `position` (the event there, and
/// every event before it that committed, have been applied), or `timeout` passes.
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
        if let Some(cursor) = checkpoint::live_cursor(pool, projection).await? {
            if cursor.covers(position) {
                return Ok(());
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
