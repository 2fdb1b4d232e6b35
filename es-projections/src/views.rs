//! Creating a generation's tables and pointing the logical views at the live generation.
//!
//! Readers query `deals`, a view over `deals_g<N>`; switching generations replaces the views in
//! one transaction, so readers see the old tables or the new ones, never a mix.

use sqlx::{PgConnection, PgPool};

use crate::engine::DynProjector;
use crate::error::ProjectionError;
use crate::projector::Tables;

/// Runs the projector's `setup` for `tables` and, when `live`, points the views at them; one
/// transaction.
pub async fn setup(
    pool: &PgPool,
    projector: &dyn DynProjector,
    tables: &Tables,
    live: bool,
) -> Result<(), ProjectionError> {
    let mut tx = pool.begin().await?;
    projector
        .setup(&mut tx, tables)
        .await
        .map_err(|source| ProjectionError::Projector {
            projection: projector.name().to_string(),
            action: "setup",
            source,
        })?;
    if live {
        point_views(&mut tx, tables).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Points each logical view at its physical table, replacing the view when its columns changed.
pub async fn point_views(conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectionError> {
    for (logical, physical) in tables.iter() {
        // Names were validated by Tables::new: safe to interpolate.
        let current: Option<String> = sqlx::query_scalar(
            "SELECT definition FROM pg_views WHERE schemaname = current_schema() AND viewname = $1",
        )
        .bind(logical)
        .fetch_optional(&mut *conn)
        .await?;
        if current.is_some_and(|d| d.contains(&format!("FROM {physical}"))) {
            continue;
        }
        sqlx::query(&format!("DROP VIEW IF EXISTS {logical}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!(
            "CREATE VIEW {logical} AS SELECT * FROM {physical}"
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Drops a generation's tables (after a switch).
pub async fn drop_tables(conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectionError> {
    for (_, physical) in tables.iter() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {physical}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
