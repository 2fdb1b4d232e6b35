//! `es-bench load`: how long loading one aggregate takes as its stream grows, with and without
//! snapshots, against raw PostgreSQL reading the same rows.
//!
//! For each stream length L (10, 100, 1,000, 10,000 by default) a Deal stream of L events is
//! written through the repository with a snapshot every 100 events, so the latest snapshot sits
//! at the end of the stream (the best case). For each L of at least 100 a second stream of
//! L + 99 events puts it 99 events behind (the worst case). Each stream is then loaded four
//! ways, round-robin, for several repetitions after a warm-up:
//!
//! - raw: `SELECT event_type, payload FROM es_events WHERE stream_id = $1 ORDER BY
//!   stream_version`, each payload deserialised into the event enum and folded;
//! - raw with every envelope column `read_stream` reads (ids, positions, metadata, time),
//!   decoded but otherwise unused: what reading the whole envelope would cost;
//! - the repository without snapshots (a full replay: the five columns folding needs, read by
//!   `read_stream_for_fold`, upcasting, decoding);
//! - the repository with snapshots (the snapshot row, then the events after it);
//! - the repository starting from a read-model row (`ReadModelSource`): a read table holding
//!   the aggregate's state and the version it reflects, as a projector writing the state would,
//!   at the same versions as the snapshots, then the events after it.
//!
//! All five must produce the same state, or the run fails. Reported: medians, the p10-p90
//! spread, and the ratios repository / raw and from-snapshot / full replay.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::{
    Aggregate, DomainEvent, Repository, SnapshotPolicy, SnapshotWrite, StreamId, StreamVersion,
};
use es_postgres::PgEventStore;
use es_projections::{Projector, ProjectorError, ReadModelSource, StateRows, Tables};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sqlx::PgPool;

use crate::fresh_db::with_fresh_database;
use crate::report::{count, ms, times, Table};
use crate::stats::{ratio, Samples};
use crate::svg::{line_chart, Axis, Series};
use crate::BenchError;

/// Options of `es-bench load`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the markdown section.
    #[arg(long)]
    out: PathBuf,
    /// Measured repetitions of every load.
    #[arg(long, default_value_t = 30)]
    repetitions: usize,
    /// Unmeasured repetitions first (warms caches and prepared statements).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Stream lengths, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10u64, 100, 1_000, 10_000])]
    lengths: Vec<u64>,
    /// The snapshot policy: a snapshot every N events.
    #[arg(long, default_value_t = 100)]
    snapshot_every: u64,
    /// Where to write the chart of load time against stream length (the section links to it
    /// by file name: keep it next to the markdown it ends up in).
    #[arg(long, default_value = "docs/benchmarks-load.svg")]
    svg: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// The domain: the CRM deal, whose configure events each carry a few fields, later events
// overwriting earlier keys.
// ---------------------------------------------------------------------------------------------

/// A deal's configuration, folded from its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Deal {
    fields: BTreeMap<String, Value>,
    configurations: u64,
}

/// A deal's events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DealEvent {
    /// Some fields were set.
    Configured {
        /// The fields set, by name.
        fields: Map<String, Value>,
    },
}

impl DomainEvent for DealEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Configured", 1)];
}

/// Configure the deal: one event per map.
#[derive(Clone, Debug)]
pub struct Configure(Vec<Map<String, Value>>);

/// Deals never refuse in this benchmark.
#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

impl Aggregate for Deal {
    const TYPE: &'static str = "deal";
    type Command = Configure;
    type Event = DealEvent;
    type Error = Never;

    fn handle(&self, Configure(configurations): Configure) -> Result<Vec<DealEvent>, Never> {
        Ok(configurations
            .into_iter()
            .map(|fields| DealEvent::Configured { fields })
            .collect())
    }

    fn apply(&mut self, DealEvent::Configured { fields }: &DealEvent) {
        self.configurations += 1;
        for (key, value) in fields {
            self.fields.insert(key.clone(), value.clone());
        }
    }
}

const KEYS: [&str; 12] = [
    "gasConsumption",
    "heatPumpInstallationType",
    "floorArea",
    "buildYear",
    "heatingSystem",
    "insulation",
    "occupants",
    "roofOrientation",
    "postcode",
    "budget",
    "financing",
    "installationDate",
];

/// The fields of the `i`-th configure event: three keys, numbers and text (about 120 bytes).
fn configuration(i: u64) -> Map<String, Value> {
    let key = |k: u64| KEYS[(k % KEYS.len() as u64) as usize].to_string();
    let mut fields = Map::new();
    fields.insert(key(i), json!(10_000 + i * 37 % 5_000));
    fields.insert(key(i * 5 + 1), json!(format!("option-{}", i % 7)));
    fields.insert(key(i * 7 + 3), json!({ "value": i % 100, "unit": "m2" }));
    fields
}

// ---------------------------------------------------------------------------------------------
// The four ways to load.
// ---------------------------------------------------------------------------------------------

const RAW_READ: &str =
    "SELECT event_type, payload FROM es_events WHERE stream_id = $1 ORDER BY stream_version";

/// Raw PostgreSQL: the rows, each payload deserialised and folded.
async fn load_raw(pool: &PgPool, stream: &StreamId) -> Result<(Deal, u64), BenchError> {
    let rows: Vec<(String, Value)> = sqlx::query_as(RAW_READ)
        .bind(stream.as_str())
        .fetch_all(pool)
        .await?;
    let mut deal = Deal::default();
    let events = rows.len() as u64;
    for (event_type, payload) in rows {
        deal.apply(&DealEvent::decode(&event_type, payload)?);
    }
    Ok((deal, events))
}

const RAW_READ_ENVELOPE: &str = "SELECT global_position, event_id, stream_id, stream_version, \
     event_type, schema_version, payload, metadata, recorded_at \
     FROM es_events WHERE stream_id = $1 ORDER BY stream_version";

/// One row of [`RAW_READ_ENVELOPE`].
type EnvelopeRow = (
    i64,
    uuid::Uuid,
    String,
    i64,
    String,
    i32,
    Value,
    Value,
    chrono::DateTime<chrono::Utc>,
);

/// Raw PostgreSQL reading every column the store reads; only the payloads are used.
async fn load_raw_envelope(pool: &PgPool, stream: &StreamId) -> Result<(Deal, u64), BenchError> {
    let rows: Vec<EnvelopeRow> = sqlx::query_as(RAW_READ_ENVELOPE)
        .bind(stream.as_str())
        .fetch_all(pool)
        .await?;
    let mut deal = Deal::default();
    let events = rows.len() as u64;
    for (_, _, _, _, event_type, _, payload, _, _) in rows {
        deal.apply(&DealEvent::decode(&event_type, payload)?);
    }
    Ok((deal, events))
}

/// The read table `deal_rows` (stream id, state, version): filled by the benchmark straight from
/// the snapshots (it measures loading, not projecting), read by [`ReadModelSource`].
struct DealRows;

#[async_trait::async_trait]
impl Projector for DealRows {
    type Event = DealEvent;

    fn name(&self) -> &str {
        "deal_rows"
    }

    fn tables(&self) -> &[&'static str] {
        &["deal_rows"]
    }

    async fn setup(
        &self,
        conn: &mut sqlx::PgConnection,
        tables: &Tables,
    ) -> Result<(), ProjectorError> {
        let t = tables.get("deal_rows")?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (stream_id text PRIMARY KEY, state jsonb NOT NULL, \
             stream_version bigint NOT NULL)"
        ))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        _: &mut sqlx::PgConnection,
        _: &Tables,
        _: &[es_core::EventEnvelope<DealEvent>],
    ) -> Result<(), ProjectorError> {
        Err("the benchmark fills deal_rows itself".into())
    }
}

impl StateRows<Deal> for DealRows {
    fn state_query(&self) -> &str {
        "SELECT state, stream_version FROM deal_rows WHERE stream_id = $1"
    }

    fn state_from_row(
        &self,
        row: &sqlx::postgres::PgRow,
    ) -> Result<(Deal, StreamVersion), ProjectorError> {
        use sqlx::Row;
        let state: Value = row.try_get("state")?;
        let version: i64 = row.try_get("stream_version")?;
        Ok((
            serde_json::from_value(state)?,
            StreamVersion(u64::try_from(version)?),
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Raw,
    RawEnvelope,
    FullReplay,
    FromSnapshot,
    FromReadModel,
}

const METHODS: [Method; 5] = [
    Method::Raw,
    Method::RawEnvelope,
    Method::FullReplay,
    Method::FromSnapshot,
    Method::FromReadModel,
];

/// One stream under test and its measurements.
struct Case {
    stream: StreamId,
    events: u64,
    /// The state every method must produce.
    expected: Option<Deal>,
    snapshot_version: Option<StreamVersion>,
    events_replayed: usize,
    /// One set of samples per method, in the order of [`METHODS`].
    samples: [Samples; 5],
}

struct Loaders {
    pool: PgPool,
    full: Repository<Deal>,
    snapshots: Repository<Deal>,
    read_model: Repository<Deal>,
}

impl Loaders {
    /// Loads the case's stream one way; returns the state and the time the load took.
    async fn load(&self, method: Method, case: &mut Case) -> Result<(Deal, Duration), BenchError> {
        let started = Instant::now();
        let deal = match method {
            Method::Raw | Method::RawEnvelope => {
                let (deal, events) = if method == Method::Raw {
                    load_raw(&self.pool, &case.stream).await?
                } else {
                    load_raw_envelope(&self.pool, &case.stream).await?
                };
                let elapsed = started.elapsed();
                check(
                    events == case.events,
                    "raw read a different number of events",
                )?;
                return Ok((deal, elapsed));
            }
            Method::FullReplay => {
                let loaded = self.full.load(&case.stream).await?;
                let elapsed = started.elapsed();
                check(
                    loaded.events_replayed as u64 == case.events,
                    "the full replay read a different number of events",
                )?;
                return Ok((loaded.state, elapsed));
            }
            Method::FromSnapshot => self.snapshots.load(&case.stream).await?,
            Method::FromReadModel => {
                let loaded = self.read_model.load(&case.stream).await?;
                let elapsed = started.elapsed();
                check(
                    loaded.version.0 == case.events,
                    "the read-model load ended at another version",
                )?;
                // The row sits where the snapshot does: the same events after it.
                check(
                    case.snapshot_version.is_none()
                        || loaded.snapshot_version == case.snapshot_version,
                    "the read-model load did not start from the row",
                )?;
                return Ok((loaded.state, elapsed));
            }
        };
        let elapsed = started.elapsed();
        check(
            deal.version.0 == case.events,
            "the snapshot load ended at another version",
        )?;
        case.snapshot_version = deal.snapshot_version;
        case.events_replayed = deal.events_replayed;
        Ok((deal.state, elapsed))
    }
}

fn check(ok: bool, what: &str) -> Result<(), BenchError> {
    if ok {
        Ok(())
    } else {
        Err(what.to_string().into())
    }
}

/// Runs the scenario on a fresh database and writes its section to `args.out`.
pub async fn run(url: &str, args: Args) -> Result<(), BenchError> {
    check(args.repetitions > 0, "--repetitions must be at least 1")?;
    check(
        args.snapshot_every > 0,
        "--snapshot-every must be at least 1",
    )?;
    let (section, svg) = with_fresh_database(url, 4, |pool| measure(pool, &args)).await?;
    if let Some(parent) = args.svg.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.svg, svg)?;
    eprintln!("wrote {}", args.svg.display());
    crate::common::write_section(&args.out, &section)
}

/// Load time (median, log scale) against stream length (log scale), one line per method.
fn chart(cases: &[Case]) -> String {
    let names = [
        "raw SQL",
        "raw SQL, envelope",
        "full replay",
        "from snapshot",
        "from read-model row",
    ];
    let series: Vec<Series> = names
        .iter()
        .enumerate()
        .map(|(m, name)| Series {
            name: name.to_string(),
            points: cases
                .iter()
                .map(|c| {
                    (
                        c.events as f64,
                        (c.samples[m].median().as_secs_f64() * 1000.0).max(0.01),
                    )
                })
                .collect(),
        })
        .collect();
    let max_events = cases.iter().map(|c| c.events).max().unwrap_or(10) as f64;
    let min_events = cases.iter().map(|c| c.events).min().unwrap_or(10) as f64;
    let max_ms = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.01f64, f64::max);
    let min_ms = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(f64::MAX, f64::min);
    line_chart(
        "Aggregate load time against stream length (medians)",
        &Axis {
            title: "events in stream (log scale)".into(),
            min: 10f64.powf(min_events.log10().floor()),
            max: 10f64.powf(max_events.log10().ceil()),
            log: true,
        },
        &Axis {
            title: "load time (ms, log scale)".into(),
            min: 10f64.powf(min_ms.log10().floor()),
            max: 10f64.powf(max_ms.log10().ceil()),
            log: true,
        },
        &series,
        &[],
    )
}

async fn measure(pool: PgPool, args: &Args) -> Result<(String, String), BenchError> {
    let store = PgEventStore::new(pool.clone()).without_notify();
    let every = args.snapshot_every;
    let loaders = Loaders {
        pool: pool.clone(),
        full: Repository::<Deal>::new(store.clone()),
        snapshots: Repository::<Deal>::new(store.clone()).with_snapshots(
            Arc::new(store.clone()),
            SnapshotPolicy::EveryNEvents(every),
            SnapshotWrite::Inline,
        ),
        read_model: Repository::<Deal>::new(store.clone())
            .with_state_source(Arc::new(ReadModelSource::new(pool.clone(), DealRows))),
    };

    // The streams: L events (snapshot at the end), and L + every - 1 (snapshot every - 1 behind).
    let mut lengths: Vec<u64> = Vec::new();
    for &length in &args.lengths {
        lengths.push(length);
        if length >= every {
            lengths.push(length + every - 1);
        }
    }
    lengths.sort_unstable();
    lengths.dedup();

    let started = Instant::now();
    let mut cases = Vec::with_capacity(lengths.len());
    let batch = (every / 2).max(1);
    for &events in &lengths {
        let stream = StreamId::new(format!("deal-{events}"))?;
        let mut at = 0;
        while at < events {
            let next = (at + batch).min(events);
            loaders
                .snapshots
                .execute(&stream, Configure((at..next).map(configuration).collect()))
                .await?;
            at = next;
        }
        cases.push(Case {
            stream,
            events,
            expected: None,
            snapshot_version: None,
            events_replayed: 0,
            samples: Default::default(),
        });
    }
    // The read table, at the snapshots' versions: the same starting point, read another way.
    sqlx::raw_sql(
        "CREATE TABLE deal_rows (stream_id text PRIMARY KEY, state jsonb NOT NULL, \
         stream_version bigint NOT NULL); \
         INSERT INTO deal_rows SELECT stream_id, state, stream_version FROM es_snapshots",
    )
    .execute(&pool)
    .await?;
    // One statement per call: VACUUM cannot run in the implicit transaction of a multi-statement
    // query.
    for table in ["es_events", "es_snapshots", "deal_rows"] {
        sqlx::raw_sql(&format!("VACUUM ANALYZE {table}"))
            .execute(&pool)
            .await?;
    }
    let total: u64 = lengths.iter().sum();
    eprintln!(
        "wrote {} events in {} streams in {:.1} s",
        count(total),
        cases.len(),
        started.elapsed().as_secs_f64()
    );

    let rounds = args.warmup + args.repetitions;
    for round in 0..rounds {
        // Rotate the order so that no case always runs right after the same other one.
        let n = cases.len();
        for k in 0..n {
            let case = &mut cases[(k + round) % n];
            // The methods too: the first load after switching streams may pay for it.
            for i in 0..METHODS.len() {
                let m = (i + round) % METHODS.len();
                let method = METHODS[m];
                let (state, elapsed) = loaders.load(method, case).await?;
                match &case.expected {
                    None => case.expected = Some(state),
                    Some(expected) => check(
                        *expected == state,
                        &format!("{method:?} loaded another state for {}", case.stream),
                    )?,
                }
                if round >= args.warmup {
                    case.samples[m].push(elapsed);
                }
            }
        }
        if (round + 1) % 10 == 0 || round + 1 == rounds {
            eprintln!("round {}/{rounds}", round + 1);
        }
    }
    Ok((section(args, &cases), chart(&cases)))
}

fn section(args: &Args, cases: &[Case]) -> String {
    let mut medians = Table::new(&[
        ">events in stream",
        ">raw SQL",
        ">raw SQL, envelope columns",
        ">repository, full replay",
        ">full replay / raw",
        ">snapshot at",
        ">events replayed",
        ">repository, from snapshot",
        ">from snapshot / full replay",
        ">repository, from read-model row",
        ">from row / full replay",
    ]);
    let mut spread = Table::new(&[
        ">events in stream",
        ">raw SQL p10 – p90",
        ">envelope columns p10 – p90",
        ">full replay p10 – p90",
        ">from snapshot p10 – p90",
        ">from row p10 – p90",
    ]);
    for case in cases {
        let [raw, envelope, full, snap, row] = &case.samples;
        medians.row(vec![
            count(case.events),
            ms(raw.median()),
            ms(envelope.median()),
            ms(full.median()),
            times(ratio(full.median(), raw.median())),
            case.snapshot_version.map_or("none".into(), |v| count(v.0)),
            count(case.events_replayed as u64),
            ms(snap.median()),
            times(ratio(snap.median(), full.median())),
            ms(row.median()),
            times(ratio(row.median(), full.median())),
        ]);
        let range = |s: &Samples| format!("{} – {}", ms(s.quantile(0.1)), ms(s.quantile(0.9)));
        spread.row(vec![
            count(case.events),
            range(raw),
            range(envelope),
            range(full),
            range(snap),
            range(row),
        ]);
    }
    let repetitions = cases.first().map_or(0, |c| c.samples[0].len());
    format!("{}\n\n{}", intro(args, repetitions), target(cases))
        + &format!(
            "\n{medians}\n\
         Spread of the same measurements (10th to 90th percentile):\n\
         \n\
         {spread}\n\
         ![Aggregate load time against stream length]({svg_name})\n",
            medians = medians.to_markdown(),
            spread = spread.to_markdown(),
            svg_name = args
                .svg
                .file_name()
                .map_or("benchmarks-load.svg".into(), |n| n
                    .to_string_lossy()
                    .into_owned()),
        )
}

/// The snapshot target: a 10,000-event stream with a snapshot every 100 loads in at most twice
/// the time of a full replay of a 100-event stream.
fn target(cases: &[Case]) -> String {
    let median = |events: u64, method: usize| {
        cases
            .iter()
            .find(|c| c.events == events)
            .map(|c| c.samples[method].median())
    };
    match (median(10_000, 3), median(100, 2)) {
        (Some(long), Some(short)) => {
            let best = ratio(long, short);
            let worst = median(10_099, 3)
                .map(|w| {
                    format!(
                        "; the 10,099-event stream, its snapshot 99 events behind: {}",
                        times(ratio(w, short))
                    )
                })
                .unwrap_or_default();
            format!(
                "**Target:** a 10,000-event stream with a snapshot every 100 loads in at most 2× \
                 the full replay of a 100-event stream: {}{worst}.\n",
                if best <= 2.0 {
                    format!("**met** ({best:.2}× against 2.00×)")
                } else {
                    format!("**missed** ({best:.2}× against 2.00×)")
                }
            )
        }
        _ => "**Target** (10,000 against 100 events): not measured at this scale.\n".into(),
    }
}

fn intro(args: &Args, repetitions: usize) -> String {
    let every = args.snapshot_every;
    format!(
        "## Aggregate load time against stream length (`es-bench load`)\n\
         \n\
         One Deal aggregate loaded from PostgreSQL, its stream of configure events (three fields \
         each, about 120 bytes of JSON) written beforehand through the repository with a \
         snapshot every {every} events. Streams of a round length have their latest snapshot at \
         their last event (the best case); the streams {less} events longer have it {less} events \
         behind (the worst case). Each stream is loaded five ways, round-robin: **raw SQL** \
         (`{RAW_READ}`, each payload deserialised into the event enum and folded), raw SQL \
         reading **every envelope column** `read_stream` returns (ids, positions, metadata, \
         time; decoded, only the payloads used: what a load reading the whole envelope would \
         pay), the **repository with no snapshots** (a full replay through \
         `read_stream_for_fold`: position, version, type, schema version and payload, each \
         payload parsed once from its JSON text into the event enum, upcasting, folding) and \
         the **repository with snapshots** (the snapshot row, then the \
         events after it) and the **repository from a read-model row** (`ReadModelSource`: a \
         read table holding the state and the version it reflects, filled at the snapshots' \
         versions, one indexed row read, then the events after it: the read model as \
         snapshot). All five must give the same state or the run fails. \
         {repetitions} measured repetitions after {warmup} warm-up rounds; medians, one \
         connection at a time, client and server on the same machine.",
        less = every - 1,
        warmup = args.warmup,
    )
}
