//! The `es_idempotency_keys` table: a command's key and outcome, written in the transaction of
//! its events (see `commit.rs`).
//!
//! Racing executions of one command are serialised by the key's primary key: PostgreSQL's
//! unique check waits for a transaction that inserted the same key and has not ended
//! (`_bt_check_unique` in nbtinsert.c waits on the inserter's transaction, and for
//! `ON CONFLICT`, `check_exclusion_or_unique_constraint` in execIndexing.c does the same before
//! choosing the alternative action); then `ON CONFLICT DO NOTHING` inserts nothing if that
//! transaction committed. In READ COMMITTED the next statement's snapshot sees the committed
//! key and its outcome. Under REPEATABLE READ or SERIALIZABLE (a caller's own transaction), a
//! conflicting key its snapshot cannot see is a serialization failure (documented for
//! `INSERT ... ON CONFLICT`): transient, retried as such.

use std::time::Duration;

use es_core::{CommittedStream, IdempotencyKey};
use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

const CLAIM: &str = include_str!("sql/idempotency_claim.sql");
const SAVE: &str = include_str!("sql/idempotency_save.sql");
const READ: &str = include_str!("sql/idempotency_read.sql");
const PRUNE: &str = include_str!("sql/idempotency_prune.sql");
const FREE_EXPIRED: &str = include_str!("sql/idempotency_free_expired.sql");

/// How long keys are kept by default: a day, longer than any client's retry loop or a broker's
/// redelivery window; [`crate::PgEventStore::with_idempotency_retention`] changes it.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// What a key is in the store.
pub(crate) enum Stored {
    /// Stored for the same command, with this outcome.
    Same(Vec<CommittedStream>),
    /// Stored for another command.
    Other,
}

/// Takes `key` for the current transaction: true when it was free (or had expired). False when
/// a committed transaction holds it: read it with [`read`].
pub(crate) async fn take(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    retention: Duration,
) -> Result<bool, sqlx::Error> {
    if insert(&mut *conn, key).await? {
        return Ok(true);
    }
    // Present: free it if its retention has passed, then try once more.
    sqlx::query(FREE_EXPIRED)
        .bind(key.key())
        .bind(retention.as_secs_f64())
        .execute(&mut *conn)
        .await?;
    // Freed, or gone meanwhile (a prune committed between the two statements): either way the
    // insert decides. Still there and not expired: held.
    insert(&mut *conn, key).await
}

async fn insert(conn: &mut PgConnection, key: &IdempotencyKey) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(CLAIM)
        .bind(key.key())
        .bind(key.fingerprint())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}

/// Records the outcome of the commit that took `key`.
pub(crate) async fn save(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    outcome: &[CommittedStream],
) -> Result<(), sqlx::Error> {
    let outcome = serde_json::to_value(outcome).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(SAVE)
        .bind(key.key())
        .bind(outcome)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// What `key` is stored as, if it is stored and has not expired.
pub(crate) async fn read<'c>(
    conn: impl PgExecutor<'c>,
    key: &IdempotencyKey,
    retention: Duration,
) -> Result<Option<Stored>, sqlx::Error> {
    let Some(row) = sqlx::query(READ)
        .bind(key.key())
        .bind(retention.as_secs_f64())
        .fetch_optional(conn)
        .await?
    else {
        return Ok(None);
    };
    let fingerprint: Uuid = row.try_get("fingerprint")?;
    if fingerprint != key.fingerprint() {
        return Ok(Some(Stored::Other));
    }
    let outcome: serde_json::Value = row.try_get("outcome")?;
    let streams = serde_json::from_value(outcome).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Some(Stored::Same(streams)))
}

/// Deletes up to `limit` keys older than `retention`; returns how many.
pub(crate) async fn prune<'c>(
    conn: impl PgExecutor<'c>,
    retention: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(PRUNE)
        .bind(retention.as_secs_f64())
        .bind(limit)
        .execute(conn)
        .await?
        .rows_affected())
}
