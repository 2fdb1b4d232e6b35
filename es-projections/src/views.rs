//! Creating a generation's tables and pointing the logical views at the live generation.
//!
//! Readers query `deals`, a view over `deals_g<N>`; switching generations replaces the views in
//! one transaction, so readers see the old tables or the new ones, never a mix.

use sqlx::{PgConnection, PgPool};

use crate::checkpoint::{self, Role};
use crate::engine::DynProjector;
use crate::error::ProjectionError;
use crate::projector::Tables;

/// Runs the projector's `setup` for `tables` and, for the live generation, points the views at
/// them; one transaction, serialised with every other DDL of the projection. Does nothing and
/// returns false when the generation no longer has `role` (a switch, a rollback or a drop since
/// its lease was taken): its tables may be gone already, and creating them again would leave
/// tables nobody drops. The holder's next batch finds the lease gone.
pub(crate) async fn setup(
    pool: &PgPool,
    projector: &dyn DynProjector,
    tables: &Tables,
    role: Role,
) -> Result<bool, ProjectionError> {
    let mut tx = pool.begin().await?;
    lock_ddl(&mut tx, projector.name()).await?;
    if !checkpoint::has_role(&mut tx, projector.name(), tables.generation(), role).await? {
        return Ok(false);
    }
    projector
        .setup(&mut tx, tables)
        .await
        .map_err(|source| ProjectionError::projector(projector.name(), "setup", source))?;
    if role == Role::Live {
        point_views(&mut tx, tables).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Serialises the DDL of one projection across processes until the transaction ends: two
/// concurrent `CREATE TABLE IF NOT EXISTS` of one table can both pass the check and one then fails
/// on `pg_type` (a worker starting while a rebuild sets up). A transaction-level advisory lock, so
/// it works through transaction-pooling proxies and is released at commit or rollback.
pub async fn lock_ddl(conn: &mut PgConnection, projection: &str) -> Result<(), ProjectionError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('es_projections ddl'), hashtext($1))")
        .bind(projection)
        .execute(&mut *conn)
        .await?;
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
        if current.is_some_and(|d| selects_from(&d, physical)) {
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

/// Whether a view's definition selects from `table` itself, not from a table whose name merely
/// starts with it (`deals_g1` is not `deals_g10`).
fn selects_from(definition: &str, table: &str) -> bool {
    let from = format!("FROM {table}");
    definition.match_indices(&from).any(|(at, _)| {
        definition[at + from.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
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

#[cfg(test)]
mod tests {
    use super::selects_from;

    #[test]
    fn a_generation_is_not_confused_with_a_longer_one() {
        let g10 = " SELECT deals_g10.id\n   FROM deals_g10;";
        assert!(selects_from(g10, "deals_g10"));
        assert!(!selects_from(g10, "deals_g1"));
        assert!(selects_from(
            " SELECT deals_g1.id\n   FROM deals_g1;",
            "deals_g1"
        ));
        assert!(selects_from("SELECT * FROM deals_g1", "deals_g1"));
    }
}
