//! The framework's schema migrations, kept in a ledger of their own (`es_schema_migrations`) so
//! that they live beside an application's: an application that runs its own sqlx migrations
//! (`_sqlx_migrations`) in the same database neither sees our versions nor hides its own from us.
//!
//! sqlx's `Migrator::run` records every migration in one shared table and refuses a database
//! holding a version its own directory lacks ("migration N was previously applied but is missing
//! in the resolved migrations"); sqlx 0.8 cannot point a migrator at another table. So this
//! module applies the embedded migrations ([`MIGRATOR`](crate::MIGRATOR), still built by
//! `sqlx::migrate!`, whose checksums it keeps) itself:
//! - in one transaction, under a transaction-scoped advisory lock: concurrent callers (every
//!   process calls it at start-up) wait for each other and find the work done; a failure leaves
//!   nothing half applied (PostgreSQL's DDL is transactional; none of our migrations needs to run
//!   outside a transaction);
//! - a version already recorded must have the checksum of the embedded one, or the call fails
//!   (`VersionMismatch`): an edited migration is never silently skipped;
//! - a version recorded that this binary does not embed (a newer binary migrated first) is
//!   accepted: migrations only add, so an older binary keeps working during a rolling upgrade;
//! - a database migrated by an earlier version of this crate, which used `_sqlx_migrations`,
//!   has its rows moved to our ledger, matched by version and description, checksums compared.
//!
//! [`check`] is the read-only counterpart for processes that must not run DDL (a worker, `status`,
//! `verify` under a least-privilege role): it reads the ledger and says which versions are
//! missing, and never creates or alters anything. It needs SELECT on `es_schema_migrations`,
//! which every role of [`crate::grant`] is given.

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use sqlx::migrate::MigrateError;
use sqlx::{Executor, PgConnection, PgPool};

use crate::MIGRATOR;

/// Applies the embedded migrations that are not applied yet (see the module docs).
pub(crate) async fn run(pool: &PgPool) -> Result<(), MigrateError> {
    let mut tx = pool.begin().await?;
    sqlx::query(include_str!("sql/migrations_lock.sql"))
        .execute(&mut *tx)
        .await?;
    (&mut *tx)
        .execute(include_str!("sql/migrations_ledger.sql"))
        .await?;
    adopt(&mut tx).await?;
    let applied: HashMap<i64, Vec<u8>> =
        sqlx::query_as::<_, (i64, Vec<u8>)>(include_str!("sql/migrations_applied.sql"))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let mut migrations: Vec<_> = MIGRATOR.iter().collect();
    migrations.sort_by_key(|m| m.version);
    for migration in migrations {
        match applied.get(&migration.version) {
            Some(checksum) if checksum.as_slice() == migration.checksum.as_ref() => continue,
            Some(_) => return Err(MigrateError::VersionMismatch(migration.version)),
            None => {}
        }
        let started = Instant::now();
        // A migration may hold several statements: sent as one simple query, as sqlx does.
        (&mut *tx)
            .execute(migration.sql.as_ref())
            .await
            .map_err(|e| MigrateError::ExecuteMigration(e, migration.version))?;
        sqlx::query(include_str!("sql/migrations_record.sql"))
            .bind(migration.version)
            .bind(migration.description.as_ref())
            .bind(migration.checksum.as_ref())
            .bind(i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        tracing::info!(
            version = migration.version,
            description = %migration.description,
            "framework migration applied"
        );
    }
    tx.commit().await?;
    Ok(())
}

/// Moves this crate's rows out of sqlx's shared table into its own ledger (databases migrated
/// before the ledger existed), checking each checksum.
async fn adopt(conn: &mut PgConnection) -> Result<(), MigrateError> {
    let shared: bool = sqlx::query_scalar(include_str!("sql/migrations_sqlx_ledger_exists.sql"))
        .fetch_one(&mut *conn)
        .await?;
    if !shared {
        return Ok(());
    }
    let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let descriptions: Vec<String> = MIGRATOR.iter().map(|m| m.description.to_string()).collect();
    let ours: Vec<(i64, String, Vec<u8>, i64)> =
        sqlx::query_as(include_str!("sql/migrations_sqlx_ours.sql"))
            .bind(&versions)
            .bind(&descriptions)
            .fetch_all(&mut *conn)
            .await?;
    for (version, description, checksum, _) in ours {
        let embedded = MIGRATOR.iter().find(|m| m.version == version);
        if embedded.is_some_and(|m| m.checksum.as_ref() != checksum.as_slice()) {
            return Err(MigrateError::VersionMismatch(version));
        }
        sqlx::query(include_str!("sql/migrations_adopt.sql"))
            .bind(version)
            .bind(&description)
            .execute(&mut *conn)
            .await?;
        tracing::info!(
            version,
            description,
            "framework migration moved from _sqlx_migrations to es_schema_migrations"
        );
    }
    Ok(())
}

/// Why a process may not use the database's framework schema as it is.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database lacks migrations this binary needs: apply them with [`crate::migrate`] (a
    /// worker binary's `migrate` subcommand), as a role that owns the schema, then start again.
    #[error("the database's framework schema is behind this binary: {applied}, this binary needs migrations up to {required} (missing: {missing})")]
    Behind {
        /// What the ledger records.
        applied: Applied,
        /// The highest version this binary embeds.
        required: i64,
        /// The embedded versions the ledger lacks, comma separated.
        missing: String,
    },
    /// An applied migration differs from the one this binary embeds (an edited migration):
    /// the binary and the database do not belong together.
    #[error(
        "framework migration {0} applied to the database differs from the one this binary embeds"
    )]
    Mismatch(i64),
    /// The ledger could not be read (no SELECT on `es_schema_migrations`, a lost connection).
    #[error("cannot read the framework's migration ledger es_schema_migrations: {0}")]
    Unreadable(#[source] sqlx::Error),
}

/// The framework migrations a database has, as [`SchemaError::Behind`] shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// No ledger at all: never migrated (or migrated by a version that kept its rows in
    /// `_sqlx_migrations`, which `migrate` moves over).
    Nothing,
    /// The highest version recorded.
    UpTo(i64),
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Applied::Nothing => write!(f, "no framework migration is recorded"),
            Applied::UpTo(version) => write!(f, "migrations up to {version} are applied"),
        }
    }
}

/// Checks, reading only, that every embedded migration is applied with its checksum (see the
/// module docs). Versions recorded that this binary does not embed are accepted, as by [`run`].
pub(crate) async fn check(pool: &PgPool) -> Result<(), SchemaError> {
    let exists: bool = sqlx::query_scalar(include_str!("sql/migrations_ledger_exists.sql"))
        .fetch_one(pool)
        .await
        .map_err(SchemaError::Unreadable)?;
    let applied: HashMap<i64, Vec<u8>> = if exists {
        sqlx::query_as::<_, (i64, Vec<u8>)>(include_str!("sql/migrations_applied.sql"))
            .fetch_all(pool)
            .await
            .map_err(SchemaError::Unreadable)?
            .into_iter()
            .collect()
    } else {
        HashMap::new()
    };
    let mut missing = Vec::new();
    for migration in MIGRATOR.iter() {
        match applied.get(&migration.version) {
            Some(checksum) if checksum.as_slice() == migration.checksum.as_ref() => {}
            Some(_) => return Err(SchemaError::Mismatch(migration.version)),
            None => missing.push(migration.version),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort_unstable();
    Err(SchemaError::Behind {
        applied: applied
            .keys()
            .max()
            .map_or(Applied::Nothing, |v| Applied::UpTo(*v)),
        required: MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0),
        missing: missing
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    })
}
