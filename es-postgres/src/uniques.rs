//! The `es_unique_claims` table: which stream holds each unique value, changed in the
//! transaction of the events that claim or release it (see `commit.rs`).
//!
//! Two transactions claiming one value are serialised by the table's primary key: the second
//! insert waits for the first transaction to end (`check_exclusion_or_unique_constraint`,
//! execIndexing.c) and, if it committed, `ON CONFLICT DO NOTHING` skips the row; the next
//! statement (READ COMMITTED) reads the holder. Releases run before claims, so a commit can
//! hand a value from one of its streams to another.

use std::collections::{BTreeMap, HashSet};

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

/// Applies the unique changes of a commit's streams: releases, then claims. `Ok(Err(..))`
/// when a value is held by another stream (the caller rolls back).
pub(crate) async fn apply(
    conn: &mut PgConnection,
    changes: &[(&StreamId, &UniqueChange)],
) -> Result<Result<(), Taken>, sqlx::Error> {
    let mut releases: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    let mut claims: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    for (stream, change) in changes {
        let target = match change {
            UniqueChange::Release { .. } => &mut releases,
            UniqueChange::Claim { .. } => &mut claims,
        };
        let (scope, value) = change.key();
        target.0.push(scope);
        target.1.push(value);
        target.2.push(stream.as_str());
    }
    if !releases.0.is_empty() {
        sqlx::query(RELEASE)
            .bind(&releases.0)
            .bind(&releases.1)
            .bind(&releases.2)
            .execute(&mut *conn)
            .await?;
    }
    let mut pending: Vec<(&str, &str, &str)> = claims
        .0
        .into_iter()
        .zip(claims.1)
        .zip(claims.2)
        .map(|((scope, value), stream)| (scope, value, stream))
        .collect();
    // A value found taken whose holder then releases it (between the insert and the read of
    // holders) is neither inserted nor held: claim it again. Each round either settles a claim
    // or saw a release that committed in between, so this ends.
    while !pending.is_empty() {
        let inserted = sqlx::query(CLAIM)
            .bind(pending.iter().map(|c| c.0).collect::<Vec<_>>())
            .bind(pending.iter().map(|c| c.1).collect::<Vec<_>>())
            .bind(pending.iter().map(|c| c.2).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
        let free: HashSet<(String, String)> = inserted
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        pending.retain(|(scope, value, _)| !free.contains(&(scope.to_string(), value.to_string())));
        if pending.is_empty() {
            break;
        }
        let rows = sqlx::query(HOLDERS)
            .bind(pending.iter().map(|c| c.0).collect::<Vec<_>>())
            .bind(pending.iter().map(|c| c.1).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
        let mut held = Vec::with_capacity(rows.len());
        for row in rows {
            let (scope, value, holder): (String, String, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            held.push((scope, value, holder));
        }
        for (scope, value, holder) in &held {
            let claimer = pending
                .iter()
                .find(|(s, v, _)| s == scope && v == value)
                .map(|c| c.2);
            // Held by the claiming stream itself: claiming again is a no-op.
            if claimer.is_some_and(|claimer| claimer != holder) {
                return Ok(Err(Taken {
                    scope: scope.clone(),
                    value: value.clone(),
                    holder: holder.clone(),
                }));
            }
        }
        pending.retain(|(scope, value, _)| !held.iter().any(|(s, v, _)| s == scope && v == value));
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
