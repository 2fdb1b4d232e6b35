//! The motivating case: a CRM deal whose `Configured` events each carry a few fields
//! (`gasConsumption`, `heatPumpInstallationType`, ...), later values overwriting earlier keys.
//!
//! - [`Deal`] is the aggregate: create, configure (merge fields), close. No configuration
//!   before the deal is created or after it is closed.
//! - [`DealEvent`] is its event enum. `Configured` is at schema version 2; version 1 (written
//!   by an older deployment) carried one field per event as `{"key": ..., "value": ...}` and is
//!   upcast on read by the step in [`upcasters`].
//! - The CRM id lives beside the event-sourced part, in the plain table `deal_crm_ids`
//!   ([`create_deal`] writes the row and the `Created` event in one transaction).
//! - [`DealsProjector`] maintains the read table `deals`: typed, indexed columns for the fields
//!   queries filter on, the whole configuration as `jsonb`, and the stream version it reflects.
//! - [`load`] is the workload generator behind the `deal-load` binary: deterministic, skewed,
//!   resumable.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use es_core::{
    Aggregate, CommandOptions, CommandOutcome, DomainEvent, EventData, EventEnvelope, EventStore,
    ExpectedVersion, Metadata, Repository, RepositoryError, StoreError, StreamId, StreamVersion,
    Upcasters,
};
use es_postgres::PgEventStore;
use es_projections::{Projector, ProjectorError, StateRows, Tables};
use futures::{StreamExt, TryStreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sqlx::Row;
use sqlx::{PgConnection, PgPool};

/// A deal's state, folded from its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Deal {
    /// Whether the deal was created.
    pub created: bool,
    /// Whether the deal is closed.
    pub closed: bool,
    /// The configuration: every field ever configured, the latest value of each.
    pub configuration: Map<String, Value>,
}

/// What happened to a deal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DealEvent {
    /// The deal was created. It carries nothing: the CRM id lives beside the stream.
    Created,
    /// Some fields were configured; they overwrite earlier values of the same keys.
    /// Schema version 2 (version 1 carried one `{"key", "value"}` pair per event).
    Configured {
        /// The fields set.
        fields: Map<String, Value>,
    },
    /// The deal was closed: no more configuration.
    Closed,
}

impl DomainEvent for DealEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] =
        &[("Created", 1), ("Configured", 2), ("Closed", 1)];
}

/// The event registry for a database holding only deals: current versions plus the
/// `Configured` v1 -> v2 step. A database shared with other aggregates needs every one of their
/// event types registered too (a worker stops on an unknown type): see [`crate::upcasters`].
pub fn upcasters() -> Upcasters {
    // The registry is static and checked by the tests: building it cannot fail.
    match register(Upcasters::builder()).build() {
        Ok(upcasters) => upcasters,
        Err(error) => panic!("the deal upcaster chain is inconsistent: {error}"),
    }
}

/// Adds the deal event types and their upcaster steps to a registry.
pub fn register(builder: es_core::UpcastersBuilder) -> es_core::UpcastersBuilder {
    builder
        .register::<DealEvent>()
        .step("Configured", 1, configured_v1_to_v2)
}

/// Every deal stream's id starts with this. Event type names are global in the log (a bank
/// account could have a `Closed` too), so the projector only reads deal streams.
pub const STREAM_PREFIX: &str = "deal-";

/// `Configured` v1 `{"key": k, "value": v}` becomes v2 `{"fields": {k: v}}`.
pub fn configured_v1_to_v2(payload: Value) -> Result<Value, String> {
    let key = payload
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("Configured v1 without a string \"key\": {payload}"))?;
    let value = payload.get("value").cloned().unwrap_or(Value::Null);
    let mut fields = Map::new();
    fields.insert(key.to_string(), value);
    Ok(json!({ "fields": fields }))
}

/// The v1 payload of one configured field, as an old deployment wrote it.
pub fn configured_v1_payload(key: &str, value: &Value) -> Value {
    json!({ "key": key, "value": value })
}

/// What callers ask of a deal.
#[derive(Clone, Debug, PartialEq)]
pub enum DealCommand {
    /// Create it (see [`create_deal`], which also records the CRM id).
    Create,
    /// Set some fields.
    Configure {
        /// The fields to set; they overwrite earlier values.
        fields: Map<String, Value>,
    },
    /// Close it.
    Close,
}

/// Why a deal refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DealError {
    /// Creating a deal twice.
    #[error("the deal already exists")]
    AlreadyCreated,
    /// Configuring or closing a deal that was never created.
    #[error("the deal does not exist")]
    NotCreated,
    /// Configuring or closing a closed deal.
    #[error("the deal is closed")]
    Closed,
    /// A configuration with no fields.
    #[error("a configuration needs at least one field")]
    EmptyConfiguration,
}

impl Aggregate for Deal {
    const TYPE: &'static str = "deal";
    type Command = DealCommand;
    type Event = DealEvent;
    type Error = DealError;

    fn handle(&self, command: DealCommand) -> Result<Vec<DealEvent>, DealError> {
        match command {
            DealCommand::Create if self.created => Err(DealError::AlreadyCreated),
            DealCommand::Create => Ok(vec![DealEvent::Created]),
            _ if !self.created => Err(DealError::NotCreated),
            _ if self.closed => Err(DealError::Closed),
            DealCommand::Configure { fields } if fields.is_empty() => {
                Err(DealError::EmptyConfiguration)
            }
            DealCommand::Configure { fields } => Ok(vec![DealEvent::Configured { fields }]),
            DealCommand::Close => Ok(vec![DealEvent::Closed]),
        }
    }

    fn apply(&mut self, event: &DealEvent) {
        match event {
            DealEvent::Created => self.created = true,
            DealEvent::Configured { fields } => {
                for (key, value) in fields {
                    self.configuration.insert(key.clone(), value.clone());
                }
            }
            DealEvent::Closed => self.closed = true,
        }
    }

    // Loading owns each event: its fields move into the configuration, no clone.
    fn apply_owned(&mut self, event: DealEvent) {
        match event {
            DealEvent::Configured { fields } => self.configuration.extend(fields),
            other => self.apply(&other),
        }
    }
}

/// The stream of deal `n` as the load generator names it.
pub fn deal_stream(n: u64) -> String {
    format!("{STREAM_PREFIX}{n}")
}

/// Creates the plain table that holds each deal's CRM id (outside the event-sourced part).
pub async fn create_crm_table(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS deal_crm_ids (deal_id text PRIMARY KEY, crm_id text NOT NULL)",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Why [`create_deal`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateDealError {
    /// Recording the CRM id (or committing the transaction).
    #[error("recording the CRM id: {0}")]
    Crm(#[from] sqlx::Error),
    /// Deciding the command.
    #[error(transparent)]
    Command(#[from] RepositoryError<DealError>),
    /// Appending the event (a conflict: the deal was created meanwhile).
    #[error(transparent)]
    Append(#[from] StoreError),
}

/// Application code: creates a deal and records its CRM id beside it, in one transaction: the
/// `deal_crm_ids` row and the `Created` event commit together or not at all.
pub async fn create_deal(
    deals: &Repository<Deal>,
    store: &PgEventStore,
    deal: &StreamId,
    crm_id: &str,
) -> Result<CommandOutcome<DealEvent>, CreateDealError> {
    let decision = deals
        .decide(deal, DealCommand::Create, CommandOptions::default())
        .await?;
    let mut tx = store.pool().begin().await?;
    sqlx::query("INSERT INTO deal_crm_ids (deal_id, crm_id) VALUES ($1, $2)")
        .bind(deal.as_str())
        .bind(crm_id)
        .execute(&mut *tx)
        .await?;
    let Some(commit) = decision.commit else {
        // Create always causes an event; nothing to write otherwise.
        tx.commit().await?;
        return Ok(CommandOutcome {
            stream_version: decision.version,
            global_position: None,
            events: decision.events,
            attempts: 1,
            replayed: decision.replayed,
        });
    };
    let committed = store.commit_in(&mut tx, commit).await?;
    tx.commit().await?;
    let written = committed.stream(deal).map(|s| s.result());
    Ok(CommandOutcome {
        stream_version: written.map_or(decision.version, |w| w.stream_version),
        global_position: written.map(|w| w.global_position),
        events: decision.events,
        attempts: 1,
        replayed: committed.replayed,
    })
}

/// The read model of deals. Logical table `deals`:
///
/// | column | type | |
/// |---|---|---|
/// | deal_id | text | primary key (the stream id) |
/// | configuration | jsonb | every field, latest value |
/// | gas_consumption | numeric | `configuration->'gasConsumption'` when a number, indexed |
/// | heat_pump_installation_type | text | `configuration->>'heatPumpInstallationType'`, indexed |
/// | closed | bool | indexed |
/// | stream_version | bigint | the last event reflected |
///
/// The typed columns are generated from the jsonb, so they can never disagree with it.
pub struct DealsProjector;

#[async_trait]
impl Projector for DealsProjector {
    type Event = DealEvent;

    fn name(&self) -> &str {
        "deals"
    }

    fn tables(&self) -> &[&'static str] {
        &["deals"]
    }

    fn accepts_stream(&self, stream: &StreamId) -> bool {
        stream.as_str().starts_with(STREAM_PREFIX)
    }

    async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError> {
        let t = tables.get("deals")?;
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    deal_id text PRIMARY KEY,
                    configuration jsonb NOT NULL DEFAULT '{{}}'::jsonb,
                    gas_consumption numeric GENERATED ALWAYS AS (
                        CASE WHEN jsonb_typeof(configuration->'gasConsumption') = 'number'
                             THEN (configuration->>'gasConsumption')::numeric END) STORED,
                    heat_pump_installation_type text GENERATED ALWAYS AS (
                        configuration->>'heatPumpInstallationType') STORED,
                    closed boolean NOT NULL DEFAULT false,
                    stream_version bigint NOT NULL
                )"
            ),
            format!("CREATE INDEX IF NOT EXISTS {t}_gas_idx ON {t} (gas_consumption)"),
            format!(
                "CREATE INDEX IF NOT EXISTS {t}_heat_pump_idx ON {t} (heat_pump_installation_type)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {t}_closed_idx ON {t} (closed)"),
        ];
        for sql in statements {
            sqlx::query(&sql).execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        events: &[EventEnvelope<DealEvent>],
    ) -> Result<(), ProjectorError> {
        let changes = fold_batch(events);
        if changes.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(changes.len());
        let mut configurations = Vec::with_capacity(changes.len());
        let mut closed = Vec::with_capacity(changes.len());
        let mut versions = Vec::with_capacity(changes.len());
        for change in changes {
            ids.push(change.deal_id);
            configurations.push(Value::Object(change.fields).to_string());
            closed.push(change.closed);
            versions.push(change.stream_version);
        }
        let t = tables.get("deals")?;
        // One statement for the whole batch. The version guard makes a replayed batch a no-op.
        let sql = format!(
            "INSERT INTO {t} AS d (deal_id, configuration, closed, stream_version)
             SELECT id, conf::jsonb, closed, version
             FROM unnest($1::text[], $2::text[], $3::bool[], $4::bigint[]) AS u(id, conf, closed, version)
             ON CONFLICT (deal_id) DO UPDATE SET
                 configuration = d.configuration || excluded.configuration,
                 closed = d.closed OR excluded.closed,
                 stream_version = excluded.stream_version
             WHERE d.stream_version < excluded.stream_version"
        );
        sqlx::query(&sql)
            .bind(ids)
            .bind(configurations)
            .bind(closed)
            .bind(versions)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// One deal's net change within a batch.
#[derive(Debug, PartialEq)]
struct DealChange {
    deal_id: String,
    fields: Map<String, Value>,
    closed: bool,
    stream_version: i64,
}

/// The `deals` row is a deal's state at its `stream_version` (the projector writes both in one
/// statement), so a repository can start from it: `ReadModelSource::new(pool, DealsProjector)`.
impl StateRows<Deal> for DealsProjector {
    fn state_query(&self) -> &str {
        "SELECT configuration, closed, stream_version FROM deals WHERE deal_id = $1"
    }

    fn state_from_row(
        &self,
        row: &sqlx::postgres::PgRow,
    ) -> Result<(Deal, StreamVersion), ProjectorError> {
        let configuration: Value = row.try_get("configuration")?;
        let Value::Object(configuration) = configuration else {
            return Err(format!("configuration is not an object: {configuration}").into());
        };
        let version: i64 = row.try_get("stream_version")?;
        let deal = Deal {
            // Every deal stream starts with Created: a row means the deal was created.
            created: true,
            closed: row.try_get("closed")?,
            configuration,
        };
        Ok((deal, StreamVersion(u64::try_from(version)?)))
    }
}

/// Folds a batch per deal, in first-seen order: merged fields, closed, last version.
fn fold_batch(events: &[EventEnvelope<DealEvent>]) -> Vec<DealChange> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut changes: Vec<DealChange> = Vec::new();
    for envelope in events {
        let id = envelope.stream_id.as_str();
        let slot = *index.entry(id).or_insert_with(|| {
            changes.push(DealChange {
                deal_id: id.to_string(),
                fields: Map::new(),
                closed: false,
                stream_version: 0,
            });
            changes.len() - 1
        });
        let change = &mut changes[slot];
        match &envelope.event {
            DealEvent::Created => {}
            DealEvent::Configured { fields } => {
                for (key, value) in fields {
                    change.fields.insert(key.clone(), value.clone());
                }
            }
            DealEvent::Closed => change.closed = true,
        }
        change.stream_version = change
            .stream_version
            .max(i64::try_from(envelope.stream_version.0).unwrap_or(i64::MAX));
    }
    changes
}

// ---------------------------------------------------------------------------------------------
// The workload generator.

/// What to generate.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// How many deals (`deal-1` .. `deal-N`).
    pub deals: u64,
    /// How many events in total (at least two per deal).
    pub events: u64,
    /// Concurrent writer tasks.
    pub concurrency: usize,
    /// Events per append.
    pub append_batch: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            deals: 2000,
            events: 50_000,
            concurrency: 8,
            append_batch: 500,
        }
    }
}

/// What a load did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Events the plan holds in total.
    pub planned: u64,
    /// Events already there (a resumed or repeated run).
    pub already_there: u64,
    /// Events written by this run through the framework.
    pub appended: u64,
    /// Legacy (v1) rows written by this run with raw SQL.
    pub legacy: u64,
}

/// The planned final version of each deal: skewed (Zipf-like), every deal at least 2 events,
/// summing exactly to `events`. Deterministic.
pub fn plan(deals: u64, events: u64) -> Vec<u64> {
    if deals == 0 {
        return Vec::new();
    }
    let base = 2u64;
    let extra = events.saturating_sub(base * deals);
    let weights: Vec<f64> = (1..=deals).map(|n| 1.0 / (n as f64).powf(1.1)).collect();
    let total: f64 = weights.iter().sum();
    let mut targets: Vec<u64> = weights
        .iter()
        .map(|w| base + (extra as f64 * w / total).floor() as u64)
        .collect();
    // Hand the rounding remainder out to the smallest deals, one each, round robin.
    let assigned: u64 = targets.iter().sum();
    let mut remainder = (base * deals + extra).saturating_sub(assigned);
    let mut i = targets.len();
    while remainder > 0 {
        i = if i == 0 { targets.len() - 1 } else { i - 1 };
        targets[i] += 1;
        remainder -= 1;
    }
    targets
}

/// Whether deal `n` was started by the old deployment (its first configurations are v1 rows).
pub fn is_legacy(n: u64) -> bool {
    n % 7 == 3
}

/// Whether deal `n` ends closed.
pub fn ends_closed(n: u64) -> bool {
    n.is_multiple_of(5)
}

/// The stream versions of deal `n` that are legacy v1 rows.
fn legacy_versions(n: u64, target: u64) -> std::ops::RangeInclusive<u64> {
    let last = if is_legacy(n) {
        4.min(target.saturating_sub(1))
    } else {
        // No legacy rows: an empty range.
        1
    };
    2..=last
}

const HEAT_PUMP_TYPES: [&str; 4] = ["air-water", "ground-water", "hybrid", "none"];

/// The fields of deal `n`'s event at `version` (a `Configured`), deterministic.
pub fn configured_fields(n: u64, version: u64) -> Map<String, Value> {
    let mut rng = StdRng::seed_from_u64(n.wrapping_mul(1_000_003).wrapping_add(version));
    let mut fields = Map::new();
    let count = rng.gen_range(1..=3);
    for _ in 0..count {
        match rng.gen_range(0..5) {
            0 | 1 => fields.insert("gasConsumption".into(), json!(rng.gen_range(100..200))),
            2 => fields.insert(
                "heatPumpInstallationType".into(),
                json!(HEAT_PUMP_TYPES[rng.gen_range(0..HEAT_PUMP_TYPES.len())]),
            ),
            3 => fields.insert("householdSize".into(), json!(rng.gen_range(1..7))),
            _ => fields.insert("roofAreaM2".into(), json!(rng.gen_range(20..300))),
        };
    }
    fields
}

/// The event of deal `n` at `version` for a deal planned to reach `target`.
pub fn planned_event(n: u64, version: u64, target: u64) -> DealEvent {
    if version == 1 {
        DealEvent::Created
    } else if version == target && ends_closed(n) {
        DealEvent::Closed
    } else {
        DealEvent::Configured {
            fields: configured_fields(n, version),
        }
    }
}

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The database.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The event store.
    #[error(transparent)]
    Store(#[from] es_core::StoreError),
    /// Encoding an event.
    #[error(transparent)]
    Encode(#[from] es_core::EncodeError),
    /// A bad stream id.
    #[error(transparent)]
    StreamId(#[from] es_core::InvalidStreamId),
}

/// Generates the workload: `deals` deals with `events` events in all, skewed (a few deals get
/// thousands of events), written through [`PgEventStore`] in batches by several tasks, plus the
/// legacy v1 rows an old deployment wrote (raw SQL). Resumable and idempotent: each deal's
/// target is deterministic, and a deal continues from its current stream version with
/// [`ExpectedVersion::Exact`]. `progress` is told how many events were written (or found).
pub async fn load(
    pool: &PgPool,
    options: &LoadOptions,
    progress: impl Fn(u64) + Send + Sync,
) -> Result<LoadReport, LoadError> {
    create_crm_table(pool).await?;
    let targets = plan(options.deals, options.events);
    // The CRM ids, beside the event-sourced part: one idempotent statement.
    let ids: Vec<String> = (1..=options.deals).map(deal_stream).collect();
    let crm_ids: Vec<String> = (1..=options.deals).map(|n| format!("CRM-{n:08}")).collect();
    sqlx::query(
        "INSERT INTO deal_crm_ids (deal_id, crm_id) SELECT * FROM unnest($1::text[], $2::text[])
         ON CONFLICT (deal_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&crm_ids)
    .execute(pool)
    .await?;
    // Where every deal stands: one query rather than one per deal.
    let current: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT stream_id, max(stream_version) FROM es_events
         WHERE stream_id = ANY($1) GROUP BY stream_id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let store = Arc::new(PgEventStore::new(pool.clone()));
    let mut report = LoadReport {
        planned: targets.iter().sum(),
        ..LoadReport::default()
    };
    let progress = &progress;
    let mut work = Vec::new();
    for (i, &target) in targets.iter().enumerate() {
        let n = i as u64 + 1;
        let at = current
            .get(&deal_stream(n))
            .map_or(0, |v| u64::try_from(*v).unwrap_or(0));
        report.already_there += at.min(target);
        if at < target {
            work.push((n, at, target));
        }
    }
    progress(report.already_there);
    let written: Vec<(u64, u64)> = futures::stream::iter(work)
        .map(|(n, at, target)| {
            let store = store.clone();
            async move {
                let done =
                    load_deal(&store, pool, n, at, target, options.append_batch, progress).await?;
                Ok::<_, LoadError>(done)
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .try_collect()
        .await?;
    for (appended, legacy) in written {
        report.appended += appended;
        report.legacy += legacy;
    }
    if report.legacy > 0 {
        // Written by raw SQL, as an old deployment did: record their type for start-up checks.
        store.record_event_types(&[("Configured", 1)]).await?;
    }
    Ok(report)
}

/// Brings deal `n` from version `at` to `target`; returns (appended, legacy) counts.
async fn load_deal(
    store: &PgEventStore,
    pool: &PgPool,
    n: u64,
    mut at: u64,
    target: u64,
    append_batch: usize,
    progress: &(impl Fn(u64) + Send + Sync),
) -> Result<(u64, u64), LoadError> {
    let stream = StreamId::new(deal_stream(n))?;
    let legacy = legacy_versions(n, target);
    let (mut appended, mut legacy_written) = (0, 0);
    while at < target {
        let next = at + 1;
        if legacy.contains(&next) {
            // The old deployment wrote one field per event, at schema version 1, by hand.
            let fields = configured_fields(n, next);
            let (key, value) = fields
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap_or_else(|| ("gasConsumption".into(), json!(0)));
            sqlx::query(
                "INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload)
                 VALUES ($1, $2, $3, 'Configured', 1, $4)",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(stream.as_str())
            .bind(i64::try_from(next).unwrap_or(i64::MAX))
            .bind(configured_v1_payload(&key, &value))
            .execute(pool)
            .await?;
            at = next;
            legacy_written += 1;
            progress(1);
            continue;
        }
        // A run of current events up to the next legacy row or the batch size.
        let mut end = at;
        while end < target && !legacy.contains(&(end + 1)) && (end - at) < append_batch as u64 {
            end += 1;
        }
        let events = (next..=end)
            .map(|v| EventData::from_event(&planned_event(n, v, target), Metadata::default()))
            .collect::<Result<Vec<_>, _>>()?;
        let count = events.len() as u64;
        store
            .append(&stream, ExpectedVersion::Exact(StreamVersion(at)), events)
            .await?;
        at = end;
        appended += count;
        progress(count);
    }
    Ok((appended, legacy_written))
}

/// Folds every deal on the fly through the repository and counts those whose
/// `gasConsumption` equals `gas` (the slow path the read table replaces).
pub async fn count_by_folding(
    deals: &Repository<Deal>,
    pool: &PgPool,
    gas: i64,
    concurrency: usize,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT deal_id FROM deal_crm_ids ORDER BY deal_id")
        .fetch_all(pool)
        .await?;
    let matches: Vec<bool> = futures::stream::iter(ids)
        .map(|id| async move {
            let stream = StreamId::new(id)?;
            let loaded = deals.load(&stream).await?;
            let hit = loaded
                .state
                .configuration
                .get("gasConsumption")
                .and_then(Value::as_i64)
                == Some(gas);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hit)
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    Ok(matches.into_iter().filter(|hit| *hit).count() as u64)
}

/// Completes when the live generation of `projection` has applied the whole log (no lag, no
/// holes), polling [`es_projections::status()`] every `poll`; `progress` sees (watermark, head)
/// after every poll. Fails when the projection stopped on an error. Use it as the shutdown
/// future of [`es_projections::Worker::run`] to run a worker until it has caught up.
pub async fn wait_caught_up(
    pool: &PgPool,
    projection: &str,
    poll: std::time::Duration,
    progress: impl Fn(i64, i64),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    loop {
        let status = es_projections::status(pool).await?;
        let live = status
            .projections
            .iter()
            .find(|p| p.name == projection && p.role == "live");
        if let Some(live) = live {
            progress(live.watermark, status.head);
            if live.state == "failed" {
                let error = live.last_error.as_ref().map(|(e, _)| e.as_str());
                return Err(format!(
                    "projection {projection} failed: {}",
                    error.unwrap_or("unknown error")
                )
                .into());
            }
            if live.state == "running" && live.lag_events == 0 && live.hole_positions == 0 {
                return Ok(());
            }
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use es_core::testing::AggregateTest;

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn create_then_configure_merges_later_keys_over_earlier() {
        let history = [
            DealEvent::Created,
            DealEvent::Configured {
                fields: fields(
                    json!({"gasConsumption": 100, "heatPumpInstallationType": "hybrid"}),
                ),
            },
        ];
        let emitted = DealEvent::Configured {
            fields: fields(json!({"gasConsumption": 123})),
        };
        // then_events returns the state the command was handled on: fold the new event in.
        let mut deal = AggregateTest::<Deal>::given(history)
            .when(DealCommand::Configure {
                fields: fields(json!({"gasConsumption": 123})),
            })
            .then_events([emitted.clone()]);
        deal.apply(&emitted);
        assert_eq!(
            Value::Object(deal.configuration),
            json!({"gasConsumption": 123, "heatPumpInstallationType": "hybrid"})
        );
    }

    #[test]
    fn create_once() {
        AggregateTest::<Deal>::given_nothing()
            .when(DealCommand::Create)
            .then_events([DealEvent::Created]);
        AggregateTest::<Deal>::given([DealEvent::Created])
            .when(DealCommand::Create)
            .then_error(DealError::AlreadyCreated);
    }

    #[test]
    fn no_configuration_before_create() {
        AggregateTest::<Deal>::given_nothing()
            .when(DealCommand::Configure {
                fields: fields(json!({"gasConsumption": 1})),
            })
            .then_error(DealError::NotCreated);
    }

    #[test]
    fn no_configuration_after_close() {
        AggregateTest::<Deal>::given([DealEvent::Created, DealEvent::Closed])
            .when(DealCommand::Configure {
                fields: fields(json!({"gasConsumption": 1})),
            })
            .then_error(DealError::Closed);
        AggregateTest::<Deal>::given([DealEvent::Created, DealEvent::Closed])
            .when(DealCommand::Close)
            .then_error(DealError::Closed);
        AggregateTest::<Deal>::given([DealEvent::Created])
            .when(DealCommand::Configure { fields: Map::new() })
            .then_error(DealError::EmptyConfiguration);
    }

    #[test]
    fn close() {
        let deal = AggregateTest::<Deal>::given([DealEvent::Created])
            .when(DealCommand::Close)
            .then_events([DealEvent::Closed]);
        assert!(
            deal.closed,
            "then_events returns the state with the new events applied"
        );
    }

    #[test]
    fn configured_v1_is_upcast_to_v2() {
        let up = upcasters();
        let stored = es_core::RecordedEvent {
            event_id: uuid::Uuid::nil(),
            stream_id: StreamId::new("deal-1").unwrap(),
            stream_version: StreamVersion(2),
            global_position: es_core::GlobalPosition(2),
            event_type: "Configured".into(),
            schema_version: 1,
            payload: configured_v1_payload("gasConsumption", &json!(123)).into(),
            metadata: Metadata::default(),
            recorded_at: chrono::Utc::now(),
        };
        let decoded = up.decode_required::<DealEvent>(stored).unwrap();
        assert_eq!(
            decoded.event,
            DealEvent::Configured {
                fields: fields(json!({"gasConsumption": 123}))
            }
        );
        assert!(configured_v1_to_v2(json!({"value": 1})).is_err());
    }

    #[test]
    fn plan_is_skewed_and_sums_to_the_total() {
        let targets = plan(2000, 50_000);
        assert_eq!(targets.iter().sum::<u64>(), 50_000);
        assert!(targets.iter().all(|t| *t >= 2));
        assert!(
            targets[0] > 1000,
            "the busiest deal gets thousands: {}",
            targets[0]
        );
        assert_eq!(plan(3, 2), vec![2, 2, 2]);
    }

    #[test]
    fn batches_fold_per_deal() {
        let envelope = |stream: &str, version: u64, event: DealEvent| EventEnvelope {
            event,
            event_id: uuid::Uuid::nil(),
            stream_id: StreamId::new(stream).unwrap(),
            stream_version: StreamVersion(version),
            global_position: es_core::GlobalPosition(0),
            event_type: String::new(),
            metadata: Metadata::default(),
            recorded_at: chrono::Utc::now(),
        };
        let changes = fold_batch(&[
            envelope("deal-a", 1, DealEvent::Created),
            envelope("deal-b", 7, DealEvent::Closed),
            envelope(
                "deal-a",
                2,
                DealEvent::Configured {
                    fields: fields(json!({"x": 1, "y": 1})),
                },
            ),
            envelope(
                "deal-a",
                3,
                DealEvent::Configured {
                    fields: fields(json!({"x": 2})),
                },
            ),
        ]);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].deal_id, "deal-a");
        assert_eq!(
            Value::Object(changes[0].fields.clone()),
            json!({"x": 2, "y": 1})
        );
        assert_eq!(changes[0].stream_version, 3);
        assert!(changes[1].closed);
        // Other aggregates' streams never reach the fold: the engine skips them.
        assert!(DealsProjector.accepts_stream(&StreamId::new("deal-9").unwrap()));
        assert!(!DealsProjector.accepts_stream(&StreamId::new("account-c").unwrap()));
    }
}
