//! Reading the log one batch ahead of the batch being applied, on a connection of its own.
//!
//! A replay alternates two kinds of work: reading a batch (the server sends rows, the client
//! decodes them) and applying it (the server writes the read tables and the checkpoint). Done in
//! turn on one connection, one side always waits for the other. Reading ahead overlaps them: the
//! next batch is read while the current one is applied.
//!
//! It changes nothing in what is applied or checkpointed. The log is append-only, so which
//! connection or snapshot a batch is read in does not matter, and the cursor after a batch
//! depends only on the cursor before it and what was read. Each batch is still applied and
//! checkpointed in one transaction, in order. Memory stays bounded by two batches: the one
//! being applied and the one being read.

use es_core::StoreError;
use es_postgres::{read_batch, LogBatch, LogCursor};
use sqlx::PgPool;
use tokio::task::JoinHandle;

/// Batches of the log after a cursor, each read in the background while the previous one is
/// being used.
pub struct ReadAhead {
    pool: PgPool,
    limit: usize,
    /// The read in flight, and the cursor it reads after.
    pending: Option<(LogCursor, JoinHandle<Result<LogBatch, StoreError>>)>,
}

impl ReadAhead {
    /// Starts reading the batch of up to `limit` events after `from`, on a connection of `pool`.
    pub fn start(pool: PgPool, from: LogCursor, limit: usize) -> Self {
        let mut reader = Self {
            pool,
            limit,
            pending: None,
        };
        reader.read_after(from);
        reader
    }

    /// The next batch, and the read of the one after it started. `None` after an idle batch
    /// (nothing new, cursor unchanged) or an error: the replay has caught up or must stop.
    pub async fn next(&mut self) -> Option<Result<LogBatch, StoreError>> {
        let (from, read) = self.pending.take()?;
        let batch = match read.await {
            Ok(batch) => batch,
            Err(join) => Err(StoreError::storage(
                "reading the global log ahead",
                false,
                join,
            )),
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => return Some(Err(e)),
        };
        if batch.is_idle(&from) {
            return None;
        }
        self.read_after(batch.next.clone());
        Some(Ok(batch))
    }

    fn read_after(&mut self, from: LogCursor) {
        let (pool, limit, cursor) = (self.pool.clone(), self.limit, from.clone());
        let read = tokio::spawn(async move {
            let mut conn = pool
                .acquire()
                .await
                .map_err(|e| es_postgres::error::storage("acquiring a connection", e))?;
            read_batch(&mut conn, &cursor, limit).await
        });
        self.pending = Some((from, read));
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Some((_, read)) = self.pending.take() {
            read.abort();
        }
    }
}
