//! The three systems measured, each doing the same work on its own table of the same database:
//!
//! - cqrs-es + postgres-es: `CqrsFramework::execute` (load every event, handle, commit) over
//!   `PostgresEventRepository` on postgres-es's `events` table; loading is
//!   `PersistedEventStore::load_aggregate` (event-sourced, no snapshots).
//! - ours: `es_core::Repository<es_examples::deal::Deal>` over `es_postgres::PgEventStore` on
//!   `es_events` (the migrations), with the example's upcaster registry.
//! - raw PostgreSQL: in one transaction, read the stream, decide, insert the next version, on
//!   a minimal table `raw_events`; loading reads the stream and folds the payloads.

use std::sync::Arc;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{CqrsFramework, EventStore as _};
use es_core::{Repository, StreamId};
use es_examples::deal::{Deal, DealCommand};
use es_postgres::PgEventStore;
use futures::TryStreamExt;
use postgres_es::PostgresEventRepository;
use serde_json::{Map, Value};
use sqlx::{PgPool, Row};

use crate::cqrs_deal::CqrsDeal;
use crate::BenchError;

/// postgres-es's schema (its `db/init.sql`, without the test view and user).
pub const CQRS_ES_DDL: [&str; 2] = [
    "CREATE TABLE events (
        aggregate_type text                         NOT NULL,
        aggregate_id   text                         NOT NULL,
        sequence       bigint CHECK (sequence >= 0) NOT NULL,
        event_type     text                         NOT NULL,
        event_version  text                         NOT NULL,
        payload        json                         NOT NULL,
        metadata       json                         NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, sequence)
    )",
    "CREATE TABLE snapshots (
        aggregate_type   text                                 NOT NULL,
        aggregate_id     text                                 NOT NULL,
        last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
        current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
        payload          json                                 NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
    )",
];

/// The raw baseline's table: the least a stream of events needs.
pub const RAW_DDL: &str = "CREATE TABLE raw_events (
    stream_id      text   NOT NULL,
    stream_version bigint NOT NULL,
    event_type     text   NOT NULL,
    payload        jsonb  NOT NULL,
    PRIMARY KEY (stream_id, stream_version)
)";

/// Which system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// cqrs-es + postgres-es.
    CqrsEs,
    /// es-core + es-postgres as `Repository::new(PgEventStore::new(pool))` gives it: the
    /// aggregate cache and the adaptive group commit on.
    Ours,
    /// The cache, over a store `without_group_commit()`.
    OursCached,
    /// No cache, no group commit (the default before both were on).
    OursGrouped,
    /// Hand-written SQL.
    Raw,
}

impl System {
    /// All of them, in report order.
    pub const ALL: [System; 5] = [
        System::Ours,
        System::OursCached,
        System::OursGrouped,
        System::CqrsEs,
        System::Raw,
    ];

    /// The name in the report.
    pub fn label(self) -> &'static str {
        match self {
            System::CqrsEs => "cqrs-es + postgres-es",
            System::Ours => "ours, default (es-core + es-postgres)",
            System::OursCached => "ours, cache without group commit",
            System::OursGrouped => "ours, no cache, no group commit",
            System::Raw => "raw PostgreSQL",
        }
    }

    /// A short tag for aggregate ids.
    pub fn tag(self) -> &'static str {
        match self {
            System::CqrsEs => "cq",
            System::Ours => "es",
            System::OursCached => "esc",
            System::OursGrouped => "esg",
            System::Raw => "raw",
        }
    }
}

/// The three systems on one pool.
pub struct Systems {
    pool: PgPool,
    cqrs: CqrsFramework<CqrsDeal, PersistedEventStore<PostgresEventRepository, CqrsDeal>>,
    cqrs_store: PersistedEventStore<PostgresEventRepository, CqrsDeal>,
    ours: Repository<Deal>,
    ours_cached: Repository<Deal>,
    ours_grouped: Repository<Deal>,
}

impl Systems {
    /// Creates the tables the three systems need (ours: migrations) and builds them.
    pub async fn setup(pool: PgPool) -> Result<Self, BenchError> {
        es_postgres::migrate(&pool).await?;
        for ddl in CQRS_ES_DDL.iter().chain([&RAW_DDL]) {
            sqlx::query(ddl).execute(&pool).await?;
        }
        let cqrs = postgres_es::postgres_cqrs(pool.clone(), Vec::new(), ());
        let cqrs_store =
            PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone()));
        let ours = Repository::<Deal>::new(PgEventStore::new(pool.clone()))
            .with_upcasters(Arc::new(es_examples::deal::upcasters()));
        let alone = PgEventStore::new(pool.clone()).without_group_commit();
        let ours_cached = Repository::<Deal>::new(alone.clone())
            .with_upcasters(Arc::new(es_examples::deal::upcasters()))
            .with_cache(100_000);
        let ours_grouped = Repository::<Deal>::new(alone)
            .with_upcasters(Arc::new(es_examples::deal::upcasters()))
            .without_cache();
        Ok(Self {
            pool,
            cqrs,
            cqrs_store,
            ours,
            ours_cached,
            ours_grouped,
        })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Executes one command on deal `id`.
    pub async fn command(
        &self,
        system: System,
        id: &str,
        command: DealCommand,
    ) -> Result<(), BenchError> {
        match system {
            System::CqrsEs => self
                .cqrs
                .execute(id, command)
                .await
                .map_err(|e| format!("cqrs-es command on {id}: {e}").into()),
            System::Ours => {
                self.ours.execute(&StreamId::new(id)?, command).await?;
                Ok(())
            }
            System::OursCached => {
                self.ours_cached
                    .execute(&StreamId::new(id)?, command)
                    .await?;
                Ok(())
            }
            System::OursGrouped => {
                self.ours_grouped
                    .execute(&StreamId::new(id)?, command)
                    .await?;
                Ok(())
            }
            System::Raw => raw_command(&self.pool, id, command).await,
        }
    }

    /// Loads deal `id` by replaying its events; returns its configuration and event count.
    pub async fn load(
        &self,
        system: System,
        id: &str,
    ) -> Result<(Map<String, Value>, u64), BenchError> {
        match system {
            System::CqrsEs => {
                let context = self
                    .cqrs_store
                    .load_aggregate(id)
                    .await
                    .map_err(|e| format!("cqrs-es load of {id}: {e}"))?;
                let sequence = context.current_sequence as u64;
                Ok((context.aggregate.configuration, sequence))
            }
            // Loads never use the cache: both read the stream.
            System::Ours | System::OursCached | System::OursGrouped => {
                let loaded = self.ours.load(&StreamId::new(id)?).await?;
                Ok((loaded.state.configuration, loaded.version.0))
            }
            System::Raw => {
                let (state, version) = raw_load(&self.pool, id).await?;
                Ok((state.configuration, version))
            }
        }
    }
}

/// The raw fold: created, closed, configuration, from (event_type, payload) rows.
#[derive(Default)]
struct RawDeal {
    created: bool,
    closed: bool,
    configuration: Map<String, Value>,
}

impl RawDeal {
    fn apply(&mut self, event_type: &str, payload: Value) {
        match event_type {
            "Created" => self.created = true,
            "Closed" => self.closed = true,
            _ => {
                if let Value::Object(mut payload) = payload {
                    if let Some(Value::Object(fields)) = payload.remove("fields") {
                        self.configuration.extend(fields);
                    }
                }
            }
        }
    }
}

const RAW_READ: &str = "SELECT event_type, payload FROM raw_events
    WHERE stream_id = $1 ORDER BY stream_version";

async fn raw_fold<'c, E>(executor: E, id: &str) -> Result<(RawDeal, u64), sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    let mut rows = sqlx::query(RAW_READ).bind(id).fetch(executor);
    let mut deal = RawDeal::default();
    let mut version = 0;
    while let Some(row) = rows.try_next().await? {
        let event_type: String = row.try_get(0)?;
        deal.apply(&event_type, row.try_get(1)?);
        version += 1;
    }
    Ok((deal, version))
}

async fn raw_load(pool: &PgPool, id: &str) -> Result<(RawDeal, u64), BenchError> {
    Ok(raw_fold(pool, id).await?)
}

/// In one transaction: read the stream, decide as the aggregate would, insert the next version.
async fn raw_command(pool: &PgPool, id: &str, command: DealCommand) -> Result<(), BenchError> {
    let mut tx = pool.begin().await?;
    let (deal, version) = raw_fold(&mut *tx, id).await?;
    let (event_type, payload) = match command {
        DealCommand::Create if !deal.created => ("Created", Value::Null),
        DealCommand::Configure { fields } if deal.created && !deal.closed && !fields.is_empty() => {
            let mut payload = Map::new();
            payload.insert("fields".into(), Value::Object(fields));
            ("Configured", Value::Object(payload))
        }
        DealCommand::Close if deal.created && !deal.closed => ("Closed", Value::Null),
        other => return Err(format!("raw: {other:?} refused on {id}").into()),
    };
    sqlx::query(
        "INSERT INTO raw_events (stream_id, stream_version, event_type, payload)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(i64::try_from(version + 1)?)
    .bind(event_type)
    .bind(payload)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
