//! The `es_event_types` table: every (event type, schema version) the log holds, kept by the
//! insert trigger of migration 0006 and read at start-up by repositories and workers
//! ([`es_core::Upcasters::check_stored`]).

use sqlx::{PgExecutor, Row};

const STORED: &str = include_str!("sql/event_types.sql");

/// The distinct pairs, sorted.
pub(crate) async fn stored<'c>(
    conn: impl PgExecutor<'c>,
) -> Result<Vec<(String, u32)>, sqlx::Error> {
    let rows = sqlx::query(STORED).fetch_all(conn).await?;
    rows.iter()
        .map(|row| {
            let version: i32 = row.try_get(1)?;
            Ok((row.try_get(0)?, version.max(0) as u32))
        })
        .collect()
}
