//! The `es_unique_claims` table: which stream holds each unique value, changed in the
//! transaction of the events that claim or release it (see `commit.rs`).
//!
//! Two transactions claiming one value are serialised by the table's primary key: the second
//! insert waits for the first transaction to end (`check_exclusion_or_unique_constraint`,
//! execIndexing.c) and, if it committed, `ON CONFLICT DO NOTHING` skips the row; the next
//! statement (READ COMMITTED) reads the holder. Values are taken in (scope, value) order, a
//! value's releases before its claim, so a commit can hand a value from one of its streams to
//! another and two commits never wait for each other in a cycle.

use std::collections::BTreeMap;

use es_core::{StreamId, UniqueChange};
use sqlx::{PgConnection, PgExecutor, Row};

const RELEASE: &str = include_str!("sql/unique_release.sql");
const CLAIM: &str = include_str!("sql/unique_claim.sql");
const HOLDERS: &str = include_str!("sql/unique_holders.sql");
const REBUILD_LOCK: &str = include_str!("sql/unique_rebuild_lock.sql");
const REBUILD_CLEAR: &str = include_str!("sql/unique_rebuild_clear.sql");
const REBUILD_INSERT: &str = include_str!("sql/unique_rebuild_insert.sql");

/// A value another stream holds.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) scope: String,
    pub(crate) value: String,
    pub(crate) holder: String,
}

/// One value's changes in a commit: the streams releasing it, and the one claiming it.
type ValueChanges<'a> = (Vec<&'a str>, Option<&'a str>);

/// Applies the unique changes of a commit's streams, value by value in (scope, value) order,
/// and for each value its releases before its claim (so a commit can hand a value from one of
/// its streams to another). `Ok(Err(..))` when a value is held by another stream (the caller
/// rolls back).
///
/// One global order for every key a commit touches, whether it claims or releases it: two
/// commits then never each hold a key the other waits for (a deadlock). A commit claims a value
/// at most once (`Commit::check`).
pub(crate) async fn apply(
    conn: &mut PgConnection,
    changes: &[(&StreamId, &UniqueChange)],
) -> Result<Result<(), Taken>, sqlx::Error> {
    let mut by_value: BTreeMap<(&str, &str), ValueChanges> = BTreeMap::new();
    for (stream, change) in changes {
        let entry = by_value.entry(change.key()).or_default();
        match change {
            UniqueChange::Release { .. } => entry.0.push(stream.as_str()),
            UniqueChange::Claim { .. } => entry.1 = Some(stream.as_str()),
        }
    }
    for ((scope, value), (releasers, claimer)) in by_value {
        if !releasers.is_empty() {
            sqlx::query(RELEASE)
                .bind(vec![scope; releasers.len()])
                .bind(vec![value; releasers.len()])
                .bind(&releasers)
                .execute(&mut *conn)
                .await?;
        }
        let Some(claimer) = claimer else { continue };
        // A value found taken whose holder then releases it (between the insert and the read
        // of its holder) is neither inserted nor held: claim it again. Each round either
        // settles the claim or saw a release that committed in between, so this ends.
        loop {
            let inserted = sqlx::query(CLAIM)
                .bind(vec![scope])
                .bind(vec![value])
                .bind(vec![claimer])
                .fetch_optional(&mut *conn)
                .await?;
            if inserted.is_some() {
                break;
            }
            match holder(&mut *conn, scope, value).await? {
                // Held by the claiming stream itself: claiming again is a no-op.
                Some(holder) if holder == claimer => break,
                Some(holder) => {
                    return Ok(Err(Taken {
                        scope: scope.to_string(),
                        value: value.to_string(),
                        holder,
                    }))
                }
                None => continue,
            }
        }
    }
    Ok(Ok(()))
}

/// The stream holding a value, if any.
pub(crate) async fn holder<'c>(
    conn: impl PgExecutor<'c>,
    scope: &str,
    value: &str,
) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query(HOLDERS)
        .bind(vec![scope])
        .bind(vec![value])
        .fetch_optional(conn)
        .await?;
    row.map(|row| row.try_get(2)).transpose()
}

/// Locks the table for a rebuild of `scopes` (until the transaction ends) and clears them.
/// After the lock, every claim or release committed before is visible to the next statement
/// (READ COMMITTED), and none can commit until the rebuild does.
pub(crate) async fn lock_for_rebuild(
    conn: &mut PgConnection,
    scopes: &[&str],
) -> Result<(), sqlx::Error> {
    sqlx::query(REBUILD_LOCK).execute(&mut *conn).await?;
    sqlx::query(REBUILD_CLEAR)
        .bind(scopes)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Inserts the rebuilt claims: (scope, value) to holder.
pub(crate) async fn insert_rebuilt(
    conn: &mut PgConnection,
    held: &BTreeMap<(String, String), String>,
) -> Result<(), sqlx::Error> {
    let mut columns: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    for ((scope, value), holder) in held {
        columns.0.push(scope);
        columns.1.push(value);
        columns.2.push(holder);
    }
    sqlx::query(REBUILD_INSERT)
        .bind(&columns.0)
        .bind(&columns.1)
        .bind(&columns.2)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
