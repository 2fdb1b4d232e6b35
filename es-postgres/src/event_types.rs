//! The `es_event_types` table: every (event type, schema version) the log holds, read at
//! start-up by repositories and workers ([`es_core::Upcasters::check_stored`]).
//!
//! The store records a pair in the transaction of the first append that brings it, so the
//! record never claims a pair the log does not hold and never misses one the store wrote. Each
//! process remembers the pairs it has recorded or read ([`KnownTypes`]): an append of known pairs
//! costs nothing, and one with a new pair goes through a commit (one more statement, once per
//! pair and process). Events written outside the store (a bulk load in SQL) are recorded by
//! [`crate::PgEventStore::record_event_types`] or, for a whole log,
//! [`crate::PgEventStore::backfill_event_types`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use sqlx::{PgExecutor, Row};

use crate::append::Columns;

const STORED: &str = include_str!("sql/event_types.sql");
const RECORD: &str = include_str!("sql/event_types_record.sql");
const BACKFILL: &str = include_str!("sql/event_types_backfill.sql");

/// A (type, schema version) pair as the table holds it.
pub(crate) type Pair = (String, i32);

/// The pairs this process knows to be recorded, shared by a store's clones.
#[derive(Clone, Debug, Default)]
pub(crate) struct KnownTypes(Arc<RwLock<HashSet<Pair>>>, Arc<AtomicBool>);

impl KnownTypes {
    /// Whether the recorded pairs were read from the table yet (the first append of a pair not
    /// known reads them all: another process has usually recorded it).
    pub(crate) fn loaded(&self) -> bool {
        self.1.load(Ordering::Acquire)
    }

    /// Learns the pairs read from the table.
    pub(crate) fn load(&self, pairs: impl IntoIterator<Item = Pair>) {
        self.learn(pairs);
        self.1.store(true, Ordering::Release);
    }

    /// The pairs of these events not known to be recorded, without duplicates.
    pub(crate) fn unknown<'a>(&self, columns: impl IntoIterator<Item = &'a Columns>) -> Vec<Pair> {
        let known = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut new: Vec<Pair> = Vec::new();
        for columns in columns {
            for (event_type, &version) in columns.event_types.iter().zip(&columns.schema_versions) {
                let pair = (event_type.clone(), version);
                if !known.contains(&pair) && !new.contains(&pair) {
                    new.push(pair);
                }
            }
        }
        new
    }

    /// Remembers pairs recorded by a committed transaction (or read from the table).
    pub(crate) fn learn(&self, pairs: impl IntoIterator<Item = Pair>) {
        let mut known = self.0.write().unwrap_or_else(|p| p.into_inner());
        known.extend(pairs);
    }
}

/// Records pairs not recorded yet.
pub(crate) async fn record<'c>(
    conn: impl PgExecutor<'c>,
    pairs: &[Pair],
) -> Result<(), sqlx::Error> {
    let (types, versions): (Vec<&str>, Vec<i32>) =
        pairs.iter().map(|(t, v)| (t.as_str(), *v)).unzip();
    sqlx::query(RECORD)
        .bind(types)
        .bind(versions)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records the pairs of every stored event; returns how many were new.
pub(crate) async fn backfill<'c>(conn: impl PgExecutor<'c>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(BACKFILL).execute(conn).await?.rows_affected())
}

/// The distinct pairs, sorted.
pub(crate) async fn stored<'c>(conn: impl PgExecutor<'c>) -> Result<Vec<Pair>, sqlx::Error> {
    let rows = sqlx::query(STORED).fetch_all(conn).await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}
