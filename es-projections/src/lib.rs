//! `es-projections`: the read side. Projectors turn the event log into read tables; workers run
//! them, checkpointed and leased; operators run, inspect and rebuild them from a CLI.
//!
//! Which do I need?
//! - Write a [`Projector`] for each read model: `setup` creates its tables, `apply` writes a
//!   batch of typed events inside the runtime's transaction (the checkpoint commits with it).
//! - Run them with a [`Worker`] in a binary built on [`cli::main`]: `run` tails the log
//!   (NOTIFY-woken, polling as fallback), `status` shows lag, leases and errors, `verify` proves
//!   nothing was skipped (and names what was), `rebuild NAME`
//!   replays from scratch, `rebuild NAME --shadow` builds the next generation beside the live
//!   one, which workers then keep caught up; `compare`, `switch` (atomic) and `rollback` make
//!   a new projector version live with a way back ([`generations`]).
//! - Write a [`Reactor`] for effects outside the read database (a mail, an API call): delivered
//!   at least once with a stable key (the event id), retried with backoff, parked in the dead
//!   letters when it keeps failing, its stream waiting behind it ([`dead_letters`]). A process
//!   manager is a reactor that executes commands ([`process::Trigger`] gives each one its
//!   idempotency key, causation and correlation). Publish the log to a broker with a
//!   [`publisher::Publisher`] (NATS JetStream: `nats`, feature `nats`).
//! - Give operators metrics, health probes and a status page with an [`Observer`]
//!   ([`observe`]; `run --metrics-addr` in the CLI).
//! - After a command, [`wait_for`] the append's position to read your own write.
//! - Projections here are asynchronous: they trail the write by milliseconds. For a read that
//!   must see the latest write, load the aggregate with a [`ReadModelSource`]: the projection's
//!   row plus the events it has not applied yet. The same source makes commands on long
//!   streams cheap.
//!
//! Guarantees (see [`worker`]): every committed event applied exactly once in effect, per-stream
//! order, nothing skipped when transactions commit out of order ([`es_postgres::log_reader`]
//! states the proof and the tests that explore its interleavings), at most one applier per
//! projection across processes, resume from the checkpoint after a crash. [`verify()`] checks the
//! first of these on a live database, from a ledger of delivered positions written with every
//! batch.
//!
//! ```no_run
//! # use async_trait::async_trait;
//! # use es_core::{DomainEvent, EventEnvelope, Upcasters};
//! # use es_projections::{Projector, ProjectorError, Tables, Worker};
//! # use serde::{Deserialize, Serialize};
//! # use sqlx::PgConnection;
//! # #[derive(Clone, Debug, Serialize, Deserialize)] enum E { Happened }
//! # impl DomainEvent for E { const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Happened", 1)]; }
//! # struct Counts;
//! # #[async_trait] impl Projector for Counts {
//! #   type Event = E; fn name(&self) -> &str { "counts" } fn tables(&self) -> &[&'static str] { &["counts"] }
//! #   async fn setup(&self, _: &mut PgConnection, _: &Tables) -> Result<(), ProjectorError> { Ok(()) }
//! #   async fn apply(&self, _: &mut PgConnection, _: &Tables, _: &[EventEnvelope<E>]) -> Result<(), ProjectorError> { Ok(()) }
//! # }
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let worker = Worker::new(pool, Upcasters::of::<E>()).projection(Counts)?;
//! worker.run(es_projections::cli::shutdown_signal()).await?;
//! # Ok(()) }
//! ```
//!
//! Modules in reading order: [`projector`], [`worker`], `checkpoint` (the projection row:
//! leases, fencing, the ledger; private), [`engine`] (one batch), [`consumer`], [`reactor`],
//! [`process`], [`dead_letters`], [`publisher`], [`rebuild`](mod@rebuild),
//! [`generations`] (blue/green: compare, switch, rollback),
//! [`status`](mod@status), [`verify`](mod@verify) (proving nothing was skipped),
//! [`wait`](mod@wait), [`state_source`], [`views`], [`observe`], [`cli`].

mod checkpoint;
pub mod cli;
pub mod consumer;
pub mod dead_letters;
pub mod engine;
pub mod error;
pub mod generations;
#[cfg(feature = "nats")]
pub mod nats;
pub mod observe;
pub mod process;
pub mod projector;
pub mod publisher;
pub mod reactor;
pub mod read_ahead;
pub mod rebuild;
pub mod state_source;
pub mod status;
mod table;
pub mod verify;
pub mod views;
pub mod wait;
pub mod worker;

pub use consumer::{ConsumerKind, RetryPolicy};
pub use dead_letters::DeadLetter;
pub use engine::{BatchOutcome, ErrorPolicy};
pub use error::{EventLocation, InvalidName, ProjectionError, ProjectorError};
pub use generations::{
    abandon_shadow, compare, drop_retired, rollback, switch, Comparison, Switched,
};
pub use observe::{ObserveConfig, ObserveError, Observer, Serving};
pub use projector::{Projector, Tables};
pub use reactor::{OnFailure, ReactionError, Reactor, ReactorOptions};
pub use rebuild::{rebuild, rebuild_until, RebuildOptions, RebuildProgress, RebuildReport};
pub use state_source::{ReadModelSource, StateRows};
pub use status::{count_to_apply, status, Status, ToApply};
pub use verify::{verify, VerifyReport};
pub use wait::{live_cursor, wait_for};
pub use worker::{Worker, WorkerConfig};
