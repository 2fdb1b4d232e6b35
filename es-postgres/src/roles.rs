//! Least-privilege roles: what each kind of process may do to the framework's tables, granted
//! to a role that exists (created by the operator, with its password or certificate).
//!
//! | role | may | may not |
//! | --- | --- | --- |
//! | [`Role::Writer`] | append and read events; its idempotency keys, unique values, snapshots, event types; read checkpoints (read-your-writes) | UPDATE, DELETE or TRUNCATE events; alter or drop any framework table |
//! | [`Role::Projector`] | read events; write checkpoints, leases, the delivery ledger and dead letters; create its own tables and views (a projector's `setup`) | append, UPDATE or DELETE events; alter framework tables |
//! | [`Role::Reader`] | SELECT the views (and tables) that a projector role creates | anything else |
//! | [`Role::Monitor`] | SELECT the events and the bookkeeping (`status`, `verify`) and record a verification's result | anything else |
//!
//! What the guarantees rest on, in PostgreSQL:
//! - Only a table's owner (or a superuser) may `ALTER TABLE`, and so `DISABLE TRIGGER`; no
//!   privilege can be granted for it (doc page "ALTER TABLE": "You must own the table to use
//!   ALTER TABLE"; `ATSimplePermissions` in `src/backend/commands/tablecmds.c` checks the
//!   table's ownership and raises "must be owner of table"). The immutability trigger of `es_events` therefore stays on for every
//!   role here, and none has UPDATE or DELETE on `es_events` to begin with.
//! - A view is read with the privileges of its owner on the relations under it (doc page
//!   "CREATE VIEW", "Access to tables referenced in the view is determined by permissions of
//!   the view owner"), so a reader needs SELECT on the view only.
//! - Privileges on objects created later come from `ALTER DEFAULT PRIVILEGES FOR ROLE`, which
//!   applies to objects that role creates (doc page "ALTER DEFAULT PRIVILEGES"): the reader's
//!   grant names the projector role for that reason. Running it requires being that role, a
//!   member of it, or a superuser.
//! - Inserting into an identity column needs no privilege on its sequence (doc page
//!   "CREATE TABLE", `GENERATED ... AS IDENTITY`: the sequence is used implicitly; `nextval`'s
//!   privilege check is bypassed for it in `ExecEvalNextValueExpr`, `src/backend/executor/
//!   execExprInterp.c`, which calls `nextval_internal(..., false)`).
//! - From PostgreSQL 15 on, `PUBLIC` has no CREATE on the `public` schema (doc page "Schemas",
//!   5.9.6 "Usage Patterns"): a projector gets CREATE explicitly, the others do not.
//!
//! Grants are statements PostgreSQL cannot take bind parameters for: the role's name travels
//! as a transaction-local setting (`set_config`, a bound parameter) that the `sql/grant_*.sql`
//! files read and quote with `format('%I')`. Every grant is idempotent.

use std::fmt;

use sqlx::PgPool;

use crate::migrate::SchemaError;

/// The kinds of process a role can be granted for (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Appends and reads events through `PgEventStore`.
    Writer,
    /// Runs projections (`run`, `rebuild`): reads events, writes its checkpoint rows and its
    /// own tables.
    Projector,
    /// Reads the views created by these projector roles (at least one).
    Reader {
        /// The roles the projection workers run as, whose views the reader reads.
        projectors: Vec<String>,
    },
    /// Runs `status` and `verify`: reads, and records verifications.
    Monitor,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Writer => "writer",
            Role::Projector => "projector",
            Role::Reader { .. } => "reader",
            Role::Monitor => "monitor",
        })
    }
}

/// Why a grant was not made.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// No role of that name exists: create it first (`CREATE ROLE name LOGIN PASSWORD ...`).
    #[error("role {0:?} does not exist: create it first (CREATE ROLE ... LOGIN), then grant")]
    NoSuchRole(String),
    /// The name cannot be a PostgreSQL role name (empty, over 63 bytes, or holding a NUL).
    #[error("{0:?} is not a valid role name: 1 to 63 bytes, no NUL")]
    InvalidName(String),
    /// A reader needs the projector role whose views it reads.
    #[error("a reader reads the views of a projector role: name at least one")]
    NoProjector,
    /// The framework's schema is not migrated to this binary's version: migrate first.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The database refused (typically: the granting role does not own the tables, or may not
    /// set default privileges for the projector role).
    #[error("granting {role} privileges to {grantee}: {source}")]
    Database {
        /// The role kind.
        role: String,
        /// The role granted to.
        grantee: String,
        /// What PostgreSQL said.
        #[source]
        source: sqlx::Error,
    },
}

fn valid(name: &str) -> Result<(), GrantError> {
    // NAMEDATALEN - 1 bytes; PostgreSQL would truncate a longer name silently.
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(GrantError::InvalidName(name.to_string()));
    }
    Ok(())
}

async fn exists(pool: &PgPool, name: &str) -> Result<(), GrantError> {
    valid(name)?;
    let found: bool = sqlx::query_scalar(include_str!("sql/role_exists.sql"))
        .bind(name)
        .fetch_one(pool)
        .await
        .map_err(|source| GrantError::Database {
            role: "any".into(),
            grantee: name.to_string(),
            source,
        })?;
    if !found {
        return Err(GrantError::NoSuchRole(name.to_string()));
    }
    Ok(())
}

/// Grants `role`'s privileges on the framework's tables of the current schema to the existing
/// role `grantee`, in one transaction; idempotent. Run it as the owner of the tables (the role
/// that ran [`crate::migrate`]) after migrating.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_postgres::GrantError> {
/// use es_postgres::Role;
/// es_postgres::grant(&pool, &Role::Writer, "app_writer").await?;
/// es_postgres::grant(&pool, &Role::Projector, "app_projector").await?;
/// es_postgres::grant(&pool, &Role::Reader { projectors: vec!["app_projector".into()] }, "app_reader").await?;
/// # Ok(()) }
/// ```
pub async fn grant(pool: &PgPool, role: &Role, grantee: &str) -> Result<(), GrantError> {
    crate::migrate::check(pool).await?;
    exists(pool, grantee).await?;
    if let Role::Reader { projectors } = role {
        if projectors.is_empty() {
            return Err(GrantError::NoProjector);
        }
        for projector in projectors {
            exists(pool, projector).await?;
        }
    }
    let failed = |source| GrantError::Database {
        role: role.to_string(),
        grantee: grantee.to_string(),
        source,
    };
    let mut tx = pool.begin().await.map_err(failed)?;
    set(&mut tx, "es.grant_role", grantee)
        .await
        .map_err(failed)?;
    sqlx::query(include_str!("sql/grant_common.sql"))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    match role {
        Role::Writer => run(&mut tx, include_str!("sql/grant_writer.sql")).await,
        Role::Projector => run(&mut tx, include_str!("sql/grant_projector.sql")).await,
        Role::Monitor => run(&mut tx, include_str!("sql/grant_monitor.sql")).await,
        Role::Reader { projectors } => {
            let mut result = Ok(());
            for projector in projectors {
                result = set(&mut tx, "es.grant_projector", projector).await;
                if result.is_ok() {
                    result = run(&mut tx, include_str!("sql/grant_reader.sql")).await;
                }
                if result.is_err() {
                    break;
                }
            }
            result
        }
    }
    .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    tracing::info!(role = %role, grantee, "framework privileges granted");
    Ok(())
}

async fn set(conn: &mut sqlx::PgConnection, setting: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query(include_str!("sql/grant_set.sql"))
        .bind(setting)
        .bind(value)
        .execute(conn)
        .await
        .map(|_| ())
}

async fn run(conn: &mut sqlx::PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(conn).await.map(|_| ())
}
