//! `es-postgres`: es-core's event store on PostgreSQL, with sqlx.
//!
//! - [`migrate`] applies the embedded migrations: the `es_events` table (UNIQUE (stream_id,
//!   stream_version), a global position, the writing transaction's id for gap-safe tailing,
//!   a trigger refusing UPDATE, DELETE and TRUNCATE), snapshots, and the projection tables.
//! - [`PgEventStore`] implements [`es_core::EventStore`] and [`es_core::SnapshotStore`]: one
//!   statement per append, conflicts typed, NOTIFY after commit.
//!
//! ```no_run
//! use es_core::{EventData, EventStore, ExpectedVersion, StreamId};
//! use es_postgres::PgEventStore;
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! es_postgres::migrate(&pool).await?;
//! let store = PgEventStore::new(pool);
//! let deal = StreamId::new("deal-1")?;
//! let appended = store
//!     .append(&deal, ExpectedVersion::NoStream, vec![EventData::raw("Created", 1, json!({}))])
//!     .await?;
//! println!("deal-1 is at version {} (position {})", appended.stream_version, appended.global_position);
//! # Ok(()) }
//! ```
//!
//! [`check_schema`] is the read-only check for processes that must not run DDL, and [`grant`]
//! gives least-privilege roles ([`Role`]: writer, projector, reader, monitor) what they need.
//!
//! Modules: [`store`] (appends, reads, snapshots), [`group_commit`] (concurrent appends sharing
//! a transaction, opt-in), [`log_reader`] (tailing the global log without skipping events that
//! commit out of order), [`notify`] (wake-ups), [`error`] (how database errors become typed
//! ones), and with the `testing` feature `testing` (a fresh database per test).

mod append;
mod commit;
pub mod connect;
mod counts;
pub mod error;
mod event_types;
pub mod group_commit;
pub mod idempotency;
pub mod log_reader;
mod migrate;
pub mod notify;
mod roles;
mod row;
pub mod store;
mod uniques;

#[cfg(feature = "testing")]
pub mod testing;

pub use connect::{connect, ConnectError};
pub use counts::{append_counts, AppendCounts};
pub use group_commit::GroupCommit;
pub use log_reader::{
    log_head, read_at, read_batch, streams_after, Hole, Horizon, LogBatch, LogCursor,
};
pub use migrate::{Applied, SchemaError};
pub use notify::{listen, NOTIFY_CHANNEL};
pub use roles::{grant, GrantError, Role};
pub use store::PgEventStore;

/// The embedded migrations. Apply them with [`migrate`], which records them in the framework's
/// own ledger (`es_schema_migrations`); `MIGRATOR.run` would record them in sqlx's shared
/// `_sqlx_migrations`, where they clash with an application's own migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies the embedded migrations not applied yet, in one transaction, recorded in the
/// framework's own ledger `es_schema_migrations`, so that an application's sqlx migrations
/// (`_sqlx_migrations`) run beside them in the same database, before or after. Idempotent;
/// concurrent callers wait for each other. A database migrated by an earlier version of this
/// crate (into `_sqlx_migrations`) has those rows moved to the new ledger. Fails with
/// `VersionMismatch` when an applied migration differs from the embedded one.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// es_postgres::migrate(&pool).await?; // the framework's tables, in es_schema_migrations
/// // then the application's own, beside them, e.g. sqlx::migrate!().run(&pool).await?
/// # Ok(()) }
/// ```
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrate::run(pool).await
}

/// Checks, without writing anything, that the database has every migration this binary
/// embeds, with the same checksums: for processes that must not run DDL (a worker under a
/// least-privilege role, `status`, `verify`). Fails with [`SchemaError::Behind`], naming the
/// versions, until [`migrate`] has run; versions recorded by a newer binary are accepted.
/// Needs SELECT on `es_schema_migrations` (every [`Role`] has it).
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), es_postgres::SchemaError> {
/// es_postgres::check_schema(&pool).await?; // fails until `migrate` has run
/// # Ok(()) }
/// ```
pub async fn check_schema(pool: &sqlx::PgPool) -> Result<(), SchemaError> {
    migrate::check(pool).await
}
