//! `bench-cqrs-es`: the Deal workload on cqrs-es + postgres-es (from crates.io) beside this
//! framework and raw PostgreSQL, in the same run, on the same server, each on its own table of
//! one fresh database (created from `DATABASE_URL`, dropped after).
//!
//! - command path: N deals, each `Create` then K `Configure { fields }` commands, by 1 and by 16
//!   concurrent writers on distinct aggregates; commands per second.
//! - load: every aggregate of one N-deal set replayed from its events by 8 tasks; aggregates
//!   per second.
//!
//! Every measurement is repeated (the order of the systems rotates between repetitions); the
//! report quotes medians, the min–max spread and ratios of medians, as a markdown section
//! written to `--out`. This crate is the only one that depends on cqrs-es.

mod cqrs_deal;
mod systems;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use es_examples::deal::{configured_fields, DealCommand};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use crate::systems::{System, Systems};

/// The error of the whole run: anything, with its message.
pub type BenchError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The versions compared (see Cargo.toml and Cargo.lock).
const CQRS_ES_VERSION: &str = "cqrs-es 0.5.0, postgres-es 0.5.0";

/// The Deal workload on cqrs-es + postgres-es, ours and raw PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "bench-cqrs-es", version, about)]
struct Args {
    /// The PostgreSQL server; a fresh database is created on it and dropped after.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Where to write the markdown section.
    #[arg(long, default_value = "target/bench-cqrs-es.md")]
    out: PathBuf,
    /// Deals per run with several writers (and in the set that is loaded).
    #[arg(long, default_value_t = 1000)]
    deals: u64,
    /// Deals per run with one writer (each command waits for its own commit).
    #[arg(long, default_value_t = 200)]
    single_writer_deals: u64,
    /// `Configure` commands per deal, after its `Create`.
    #[arg(long, default_value_t = 10)]
    commands: u64,
    /// Concurrent writers (repeat the flag for several runs).
    #[arg(long, default_values_t = [1usize, 8, 16])]
    writers: Vec<usize>,
    /// Repetitions of every command-path measurement.
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Repetitions of every load measurement (each is short: medians need many).
    #[arg(long, default_value_t = 15)]
    load_repetitions: usize,
    /// Tasks loading aggregates.
    #[arg(long, default_value_t = 8)]
    load_tasks: usize,
    /// A bigger run: 10,000 deals (1,000 with one writer) x 20 commands, 5 repetitions.
    #[arg(long)]
    big: bool,
}

#[tokio::main]
async fn main() -> Result<(), BenchError> {
    let mut args = Args::parse();
    if args.big {
        args.deals = 10_000;
        args.single_writer_deals = 1_000;
        args.commands = 20;
        args.repetitions = args.repetitions.max(5);
    }
    if args.deals == 0 || args.repetitions == 0 || args.load_repetitions == 0 {
        return Err("--deals, --repetitions and --load-repetitions must be at least 1".into());
    }
    let connections = args
        .writers
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(args.load_tasks)
        + 2;
    let admin = PgConnectOptions::from_str(&args.database_url)?;
    let name = format!("es_bench_cqrs_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect_with(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE template0"))
        .execute(&mut conn)
        .await?;
    eprintln!("created database {name}");
    let result = async {
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(connections)?)
            .connect_with(admin.clone().database(&name))
            .await?;
        let systems = Arc::new(Systems::setup(pool.clone()).await?);
        let result = run(&args, systems).await;
        pool.close().await;
        result
    }
    .await;
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
    match dropped {
        Ok(_) => eprintln!("dropped database {name}"),
        Err(error) => eprintln!("cannot drop database {name}: {error}"),
    }
    let markdown = result?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, markdown)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// Throughputs (operations per second) of one measurement, one per repetition.
#[derive(Default)]
struct Rates(Vec<f64>);

impl Rates {
    fn push(&mut self, operations: u64, elapsed: Duration) {
        self.0
            .push(operations as f64 / elapsed.as_secs_f64().max(1e-9));
    }

    fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    fn median(&self) -> f64 {
        let sorted = self.sorted();
        match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    /// `median (min–max)`.
    fn cell(&self) -> String {
        let sorted = self.sorted();
        let (min, max) = (
            sorted.first().copied().unwrap_or(0.0),
            sorted.last().copied().unwrap_or(0.0),
        );
        format!(
            "**{}** ({}–{})",
            count(self.median()),
            count(min),
            count(max)
        )
    }
}

/// A rate with thousands separators, e.g. `10,099`.
fn count(rate: f64) -> String {
    let n = rate.round().max(0.0) as u64;
    let digits: Vec<char> = n.to_string().chars().rev().collect();
    let groups: Vec<String> = digits
        .chunks(3)
        .map(|group| group.iter().rev().collect())
        .rev()
        .collect();
    groups.join(",")
}

/// `a / b`, e.g. `1.31×`.
fn times(a: f64, b: f64) -> String {
    if b <= 0.0 {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// The systems in the order repetition `rep` runs them (rotated, so none always goes first).
fn order(rep: usize) -> [System; 5] {
    let mut all = System::ALL;
    all.rotate_left(rep % System::ALL.len());
    all
}

/// The id of deal `n` in the set written by `system` with `writers` writers, repetition `rep`.
fn deal_id(system: System, writers: usize, rep: usize, n: u64) -> String {
    format!("deal-{}-w{writers}-r{rep}-{n}", system.tag())
}

/// Writes deals 1..=`deals` (Create then `commands` Configure each) with `writers` tasks taking
/// whole deals from a shared counter; returns the wall time.
async fn write_set(
    systems: &Arc<Systems>,
    system: System,
    writers: usize,
    rep: usize,
    deals: u64,
    commands: u64,
) -> Result<Duration, BenchError> {
    let next = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let (systems, next) = (systems.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n > deals {
                    return Ok::<_, BenchError>(());
                }
                let id = deal_id(system, writers, rep, n);
                systems.command(system, &id, DealCommand::Create).await?;
                for version in 2..=commands + 1 {
                    let fields = configured_fields(n, version);
                    systems
                        .command(system, &id, DealCommand::Configure { fields })
                        .await?;
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(started.elapsed())
}

/// Loads every deal of a set with `tasks` tasks; returns the wall time and the events replayed.
async fn load_set(
    systems: &Systems,
    system: System,
    ids: &[String],
    tasks: usize,
) -> Result<(Duration, u64), BenchError> {
    let started = Instant::now();
    let events: Vec<u64> = futures::stream::iter(ids)
        .map(|id| async move { systems.load(system, id).await.map(|(_, v)| v) })
        .buffer_unordered(tasks.max(1))
        .try_collect()
        .await?;
    Ok((started.elapsed(), events.iter().sum()))
}

/// The configuration deal `n` has after its commands, folded from the plan.
fn expected_configuration(n: u64, commands: u64) -> Map<String, Value> {
    let mut configuration = Map::new();
    for version in 2..=commands + 1 {
        configuration.extend(configured_fields(n, version));
    }
    configuration
}

async fn run(args: &Args, systems: Arc<Systems>) -> Result<String, BenchError> {
    let k = args.commands;
    let deals_for = |writers: usize| {
        if writers == 1 {
            args.single_writer_deals.max(1)
        } else {
            args.deals
        }
    };

    // Command path.
    let mut writes: Vec<(usize, [Rates; 5])> = args
        .writers
        .iter()
        .map(|&w| (w, Default::default()))
        .collect();
    for rep in 0..args.repetitions {
        for (writers, rates) in &mut writes {
            let deals = deals_for(*writers);
            for system in order(rep) {
                let elapsed = write_set(&systems, system, *writers, rep, deals, k).await?;
                let commands = deals * (k + 1);
                eprintln!(
                    "rep {rep}: {} with {writers} writer(s): {commands} commands in {elapsed:.2?}",
                    system.label()
                );
                rates[index(system)].push(commands, elapsed);
            }
        }
    }

    // Load: the set the last repetition wrote with the most writers (every system has one with
    // the same deals and the same events).
    let &(load_writers, _) = writes
        .iter()
        .max_by_key(|(w, _)| deals_for(*w))
        .ok_or("no --writers given")?;
    let load_deals = deals_for(load_writers);
    let last_rep = args.repetitions - 1;
    let ids = |system: System| -> Vec<String> {
        (1..=load_deals)
            .map(|n| deal_id(system, load_writers, last_rep, n))
            .collect()
    };
    let mut loads: [Rates; 5] = Default::default();
    for rep in 0..args.load_repetitions {
        for system in order(rep) {
            if matches!(system, System::OursCached | System::OursGrouped) {
                continue; // loads never use the cache: the same as ours
            }
            let (elapsed, events) =
                load_set(&systems, system, &ids(system), args.load_tasks).await?;
            if events != load_deals * (k + 1) {
                return Err(format!("{}: loaded {events} events", system.label()).into());
            }
            eprintln!(
                "load rep {rep}: {}: {load_deals} aggregates in {elapsed:.2?}",
                system.label()
            );
            loads[index(system)].push(load_deals, elapsed);
        }
    }

    // Every system ends with the same state for every deal, the one the plan folds to.
    for n in 1..=load_deals {
        let expected = expected_configuration(n, k);
        for system in System::ALL {
            let (configuration, version) = systems
                .load(system, &deal_id(system, load_writers, last_rep, n))
                .await?;
            if configuration != expected || version != k + 1 {
                return Err(format!("{}: deal {n} differs from the plan", system.label()).into());
            }
        }
    }

    let storage = storage(&systems).await?;
    Ok(report(
        args, &writes, deals_for, &loads, load_deals, &storage,
    ))
}

fn index(system: System) -> usize {
    match system {
        System::Ours => 0,
        System::CqrsEs => 1,
        System::Raw => 2,
        System::OursCached => 3,
        System::OursGrouped => 4,
    }
}

/// (table, rows, bytes per row including indexes) of each system's event table.
async fn storage(systems: &Systems) -> Result<Vec<(System, String, i64, f64)>, BenchError> {
    let mut out = Vec::new();
    for (system, table) in [
        (System::Ours, "es_events"),
        (System::CqrsEs, "events"),
        (System::Raw, "raw_events"),
    ] {
        let (rows, bytes): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*), pg_total_relation_size('{table}') FROM {table}"
        ))
        .fetch_one(systems.pool())
        .await?;
        out.push((
            system,
            table.to_string(),
            rows,
            bytes as f64 / rows.max(1) as f64,
        ));
    }
    Ok(out)
}

/// The targets for this comparison, with their verdicts.
fn targets(writes: &[(usize, [Rates; 5])], loads: &[Rates; 5]) -> String {
    let verdict = |value: f64, target: f64| {
        if value >= target {
            format!("**met** ({value:.2}× against {target:.2}×)")
        } else {
            format!("**missed** ({value:.2}× against {target:.2}×)")
        }
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let mut out = String::new();
    if let Some((writers, rates)) = writes.iter().max_by_key(|(w, _)| *w) {
        let cqrs = rates[index(System::CqrsEs)].median();
        let _ = writeln!(
            out,
            "**Target:** the command path with {writers} writers on distinct deals at least 2× \
             cqrs-es: ours, default {}; ours, cache without group commit {}.\n",
            verdict(ratio(rates[index(System::Ours)].median(), cqrs), 2.0),
            verdict(ratio(rates[index(System::OursCached)].median(), cqrs), 2.0),
        );
    }
    // The default against cqrs-es at every writer count run.
    for (writers, rates) in writes {
        let cqrs = rates[index(System::CqrsEs)].median();
        let _ = writeln!(
            out,
            "- {writers} writers: ours, default / cqrs-es = {:.2}× (target 2×)",
            ratio(rates[index(System::Ours)].median(), cqrs),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "**Target:** loading every aggregate at least 0.9× raw reading of the same rows: {}.\n",
        verdict(
            ratio(
                loads[index(System::Ours)].median(),
                loads[index(System::Raw)].median()
            ),
            0.9
        ),
    );
    out
}

fn report(
    args: &Args,
    writes: &[(usize, [Rates; 5])],
    deals_for: impl Fn(usize) -> u64,
    loads: &[Rates; 5],
    load_deals: u64,
    storage: &[(System, String, i64, f64)],
) -> String {
    let k = args.commands;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## cqrs-es + postgres-es beside ours: the Deal workload\n"
    );
    let _ = writeln!(
        out,
        "The same Deal workload ({CQRS_ES_VERSION} from crates.io, in the separate crate \
         `bench-cqrs-es`; ours is `es_core::Repository<es_examples::deal::Deal>` over \
         `es_postgres::PgEventStore`; raw is hand-written SQL), in one run, on one server, each \
         on its own table of one fresh database. A deal is `Create` then {k} `Configure {{fields}}` \
         commands (the example's `configured_fields`), {} commands per deal; writers work on \
         distinct deals. Raw PostgreSQL does, per command, in one transaction: read the stream, \
         decide, insert the next version. Loading replays every event of each of {} deals \
         (event-sourced, no snapshots) with {} tasks. Generated by `bench-cqrs-es{}`.\n",
        k + 1,
        count(load_deals as f64),
        args.load_tasks,
        if args.big { " --big" } else { "" },
    );
    let _ = writeln!(
        out,
        "Figures are throughputs: **median** (min–max) over {} repetitions ({} for loads), the \
         order of the systems rotating between repetitions. Ratios are of medians; above 1× \
         the first named is faster. The machine is shared and noisy: read the medians and the \
         ratios, not single figures.\n",
        args.repetitions, args.load_repetitions
    );
    let _ = writeln!(out, "{}", targets(writes, loads));
    let _ = writeln!(out, "### Command path (commands/s)\n");
    let _ = writeln!(
        out,
        "| writers | deals × commands | system | commands/s | / cqrs-es | / raw |"
    );
    let _ = writeln!(out, "|---:|---:|---|---:|---:|---:|");
    for (writers, rates) in writes {
        let (cqrs, raw) = (
            rates[index(System::CqrsEs)].median(),
            rates[index(System::Raw)].median(),
        );
        for (system, name) in [
            (System::Ours, "ours"),
            (System::OursCached, "ours + cache"),
            (System::OursGrouped, "ours + cache + group commit"),
            (System::CqrsEs, "cqrs-es"),
            (System::Raw, "raw"),
        ] {
            let rate = &rates[index(system)];
            let _ = writeln!(
                out,
                "| {writers} | {} × {} | {name} | {} | {} | {} |",
                count(deals_for(*writers) as f64),
                k + 1,
                rate.cell(),
                times(rate.median(), cqrs),
                times(rate.median(), raw),
            );
        }
    }
    let _ = writeln!(out, "\n### Load: replay every aggregate (aggregates/s)\n");
    let _ = writeln!(
        out,
        "| tasks | aggregates × events | ours | cqrs-es | raw | ours / cqrs-es | ours / raw | cqrs-es / raw |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let [ours, cqrs, raw] = [loads[0].median(), loads[1].median(), loads[2].median()];
    let _ = writeln!(
        out,
        "| {} | {} × {} | {} | {} | {} | {} | {} | {} |",
        args.load_tasks,
        count(load_deals as f64),
        k + 1,
        loads[0].cell(),
        loads[1].cell(),
        loads[2].cell(),
        times(ours, cqrs),
        times(ours, raw),
        times(cqrs, raw),
    );
    let _ = writeln!(out, "\n### Storage at the end of the run\n");
    let _ = writeln!(
        out,
        "| system | table | rows | bytes per row (with indexes) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|");
    for (system, table, rows, per_row) in storage {
        let _ = writeln!(
            out,
            "| {} | `{table}` | {} | {} |",
            system.label(),
            count(*rows as f64),
            count(*per_row)
        );
    }
    let _ = writeln!(
        out,
        "\nAfter the measurements, every deal of the loaded set was loaded again through each \
         system and compared with the plan's fold: they all agree.\n"
    );
    let _ = writeln!(out, "### What each does per command\n");
    let _ = writeln!(
        out,
        "- **cqrs-es + postgres-es**: `CqrsFramework::execute` loads every event of the \
         aggregate (one `SELECT`), runs the async `handle`, then commits in an explicit \
         transaction: `BEGIN`, one `INSERT` per event, `COMMIT` — 4 round trips for a \
         one-event command (3 + one per further event). Events go to `events` keyed by \
         (aggregate_type, aggregate_id, sequence); the payload is `json` (not `jsonb`) holding \
         the whole externally tagged enum (`{{\"Configured\": {{\"fields\": …}}}}`), the event \
         type and a text `event_version` beside it, metadata as `json`. There is no global \
         position and no transaction id, so there is nothing a projector could tail safely: \
         queries are dispatched in process after the commit. A concurrent writer on the same \
         aggregate gets a primary-key violation (`AggregateConflict`); there is no retry."
    );
    let _ = writeln!(
        out,
        "- **ours, default**: `Repository::new(PgEventStore::new(pool))`, no opt-in. \
         The repository keeps each deal's state after its command (an LRU cache), so the next \
         command on it skips the read: 1 round trip (the append, one statement in its own \
         implicit transaction) per command; a stale entry makes the append conflict, and the \
         command is decided again on a fresh load. The store groups appends that arrive while \
         others are in flight into one statement and one transaction (each still checked \
         against its own expected version, whole or not at all); an append with none other in \
         flight is written at once by its own task. Workers are woken by a coalesced `NOTIFY` \
         off the command path. Each event row also carries its `event_id`, transaction id, \
         global position, `jsonb` payload (without the enum tag: the variant is the event \
         type) and metadata, `recorded_at`, with unique indexes on (stream, version), position \
         and event id, and triggers refusing updates and deletes: more bytes per row than the \
         other two."
    );
    let _ = writeln!(
        out,
        "- **ours, cache without group commit**: the same repository over a store built \
         `without_group_commit()`: one transaction per command."
    );
    let _ = writeln!(
        out,
        "- **ours, no cache, no group commit**: `without_cache()` over that store: every \
         command reads the stream (one `SELECT`), decides and appends: 2 round trips per \
         command (the default before the cache and group commit were on)."
    );
    let _ = writeln!(
        out,
        "- **raw PostgreSQL**: `BEGIN`, `SELECT` the stream, fold, `INSERT` the next version, \
         `COMMIT` — 4 round trips, on a table with just (stream, version) as primary key, the \
         type and a `jsonb` payload. It is a floor for \"read then write\" over the network, \
         not a feature-equivalent store."
    );
    out
}
