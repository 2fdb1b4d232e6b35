//! Consumers: what reads the log for effects outside the read database (reactors and process
//! managers, publishers to a broker), as opposed to projectors, whose effects commit with their
//! checkpoint.
//!
//! An effect elsewhere cannot join the checkpoint's transaction, so a consumer's batch runs in
//! three steps, none of which holds a transaction open while the effect happens:
//! 1. read the batch (`read_batch`) in a short transaction of its own, committed at once;
//! 2. hand it to the consumer ([`DynConsumer::handle_batch`]), which makes its effects;
//! 3. store the cursor after the batch and the ledger of its positions in a second short
//!    transaction, fenced by the lease (`checkpoint::hold`, then `checkpoint::save`).
//!
//! A crash between 2 and 3 delivers the batch again: delivery is at least once, and each event
//! carries a stable key (its event id) with which the effect is made exactly once (a broker's
//! message id, an idempotency key, a unique row). Splitting the read from the checkpoint is
//! sound for the reason reading ahead is (`read_ahead`): the cursor after a batch depends only
//! on the cursor before it and on what was read, whichever snapshot read it.
//!
//! Not holding a transaction during the effect matters: a transaction with an id held for the
//! length of a slow call (or of a retry's backoff) keeps every reader's `xmin` behind it, so
//! holes of rolled-back writers could not be settled meanwhile (see `es_postgres::log_reader`),
//! and `status` would name the consumer as the horizon holder.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use es_core::{RecordedEvent, StreamId, Upcasters};
use sqlx::PgPool;

use crate::dead_letters::ParkedEvent;
use crate::engine::BatchOutcome;
use crate::error::ProjectionError;

/// What a consumer is, for `status` and for the rules that differ (a reactor is never rebuilt:
/// that would repeat its effects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerKind {
    /// A [`Reactor`](crate::Reactor) (process managers are reactors).
    Reactor,
    /// A [`Publisher`](crate::publisher::Publisher) to a broker.
    Publisher,
}

impl ConsumerKind {
    /// The name stored in `es_projections.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerKind::Reactor => "reactor",
            ConsumerKind::Publisher => "publisher",
        }
    }
}

/// What a consumer's batch may use besides its events.
pub struct ConsumerContext<'a> {
    /// The database (for dead letters; never for the effect's own bookkeeping, which the
    /// consumer keeps where its effect lives).
    pub pool: &'a PgPool,
    /// The registry the worker decodes with.
    pub upcasters: &'a Upcasters,
    /// The generation the lease is on (dead letters are kept per generation).
    pub generation: i32,
    /// Streams with an open dead letter: their later events must wait behind it, in order.
    pub blocked: &'a mut HashSet<StreamId>,
    /// Keeps the lease alive during a long batch: call [`KeepAlive::renew_if_due`] before each
    /// event and run long work through [`keeping_alive`]; false means the lease was lost and the
    /// batch must stop.
    pub keep_alive: &'a mut (dyn KeepAlive + Send),
    /// Events parked by this batch: written with its checkpoint, in the same transaction.
    pub parked: Vec<ParkedEvent>,
    /// Set to stop the consumer after this batch's checkpoint (recorded as its failure).
    pub stop: Option<String>,
}

/// Renews a consumer's lease while its batch takes long.
#[async_trait]
pub trait KeepAlive {
    /// Renews the lease if a third of it has passed since the last renewal; false when it was
    /// lost (taken over or fenced).
    async fn renew_if_due(&mut self) -> Result<bool, ProjectionError>;

    /// Whether the lease was found lost: the batch's checkpoint will not be written.
    fn lost(&self) -> bool;

    /// How often to renew while one piece of work (a reaction, a backoff) takes long: a third
    /// of the lease.
    fn period(&self) -> Duration;
}

/// Runs `work` while renewing the lease every [`KeepAlive::period`]; `None` when the lease was
/// lost meanwhile (the work is dropped: delivery is at least once, it comes again).
pub async fn keeping_alive<T>(
    keep_alive: &mut (dyn KeepAlive + Send),
    work: impl std::future::Future<Output = T>,
) -> Result<Option<T>, ProjectionError> {
    tokio::pin!(work);
    loop {
        let period = keep_alive.period();
        tokio::select! {
            done = &mut work => return Ok(Some(done)),
            _ = tokio::time::sleep(period) => {
                if !keep_alive.renew_if_due().await? {
                    return Ok(None);
                }
            }
        }
    }
}

/// A consumer with its event type erased, so that a worker runs reactors and publishers beside
/// projections. Implemented by [`Reactor`](crate::Reactor)s (through
/// [`Worker::reactor`](crate::Worker::reactor)) and by publishers; not meant to be implemented
/// by applications.
#[async_trait]
pub trait DynConsumer: Send + Sync + 'static {
    /// Its name: it keys the checkpoint, in the same namespace as projections.
    fn name(&self) -> &str;
    /// What it is.
    fn kind(&self) -> ConsumerKind;
    /// Whether it reads events of this stream (others are skipped, not decoded).
    fn accepts_stream(&self, stream: &StreamId) -> bool;
    /// Events per batch, when it wants other than the worker's
    /// [`WorkerConfig::batch_size`](crate::WorkerConfig::batch_size).
    fn batch_size(&self) -> Option<usize> {
        None
    }
    /// Makes the effects of a batch, in delivery order per stream. `Ok` means every event of the
    /// batch is done (its effect made, or parked as a dead letter): the checkpoint moves past
    /// the batch. A transient error retries the batch from the checkpoint after a backoff.
    async fn handle_batch(
        &self,
        events: Vec<RecordedEvent>,
        context: &mut ConsumerContext<'_>,
    ) -> Result<BatchOutcome, ProjectionError>;
}

/// How a worker retries a consumer's failing event before parking it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included) before the event is parked.
    pub max_attempts: u32,
    /// The pause after the first failed attempt; doubled after each one.
    pub first_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let pauses: Vec<u128> = (1..=6).map(|a| policy.backoff(a).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(1));
    }
}
