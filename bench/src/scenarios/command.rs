//! `es-bench command`: the command path (`Repository::execute` on the Deal aggregate: load,
//! handle, append) against raw PostgreSQL doing the same work.
//!
//! Every writer runs `Configure` commands one after the other on its own stream (created first,
//! outside the timing); 1, 8 and 16 writers. Compared, round-robin, on fresh streams each time:
//!
//! - the default: `Repository::new(PgEventStore::new(pool))`, no opt-in (the cache and the
//!   adaptive group commit are on);
//! - the repository `without_cache()` over a store `without_group_commit()` (read the stream,
//!   fold, handle, append with the version: the old default);
//! - the cache alone (store `without_group_commit()`);
//! - the cache over a store that sends every exact append through the committers
//!   (`alone_when_idle: false`);
//! - raw "read the stream, insert the next version": one transaction per command that selects
//!   the stream's rows, folds them into the same `Deal`, handles the command and inserts the
//!   event at the next version;
//! - raw single-row INSERT per transaction, no read (the floor: one commit per command).
//!
//! Then 16 writers on one hot stream through the repository (default retry policy): successful
//! commands/s and how often a command needed more than one attempt (`CommandOutcome.attempts`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::{Aggregate, DomainEvent, EventData, Metadata, Repository, RepositoryError, StreamId};
use es_examples::deal::{configured_fields, upcasters, Deal, DealCommand, DealEvent};
use es_postgres::{GroupCommit, PgEventStore};
use serde_json::Value;
use sqlx::PgPool;

use crate::common::{check, rate, rate_median, rate_spread, verdict_at_least, write_section};
use crate::fresh_db::with_fresh_database;
use crate::report::{count, ms, times, Table};
use crate::stats::Samples;
use crate::BenchError;

/// Options of `es-bench command`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the markdown section.
    #[arg(long)]
    out: PathBuf,
    /// Measured repetitions of every cell.
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
    /// Unmeasured repetitions first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Commands in one repetition, shared among the writers.
    #[arg(long, default_value_t = 480)]
    commands: usize,
    /// Commands per writer on the hot stream, per repetition.
    #[arg(long, default_value_t = 20)]
    hot_commands: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Repository,
    Cached,
    RawReadInsert,
    RawInsert,
    Default,
    Grouped,
}

const METHODS: [Method; 6] = [
    Method::Repository,
    Method::Cached,
    Method::RawReadInsert,
    Method::RawInsert,
    Method::Default,
    Method::Grouped,
];

const WRITERS: [usize; 3] = [1, 8, 16];

fn deal_command(n: u64, version: u64) -> DealCommand {
    DealCommand::Configure {
        fields: configured_fields(n, version),
    }
}

const RAW_READ: &str =
    "SELECT event_type, payload FROM es_events WHERE stream_id = $1 ORDER BY stream_version";
const RAW_INSERT: &str = "INSERT INTO es_events (event_id, stream_id, stream_version, event_type, \
     schema_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7)";

async fn raw_insert(
    conn: &mut sqlx::PgConnection,
    stream: &str,
    version: u64,
    event: &EventData,
) -> Result<(), BenchError> {
    sqlx::query(RAW_INSERT)
        .bind(event.event_id)
        .bind(stream)
        .bind(version as i64)
        .bind(&event.event_type)
        .bind(event.schema_version as i32)
        .bind(&event.payload)
        .bind(event.metadata.to_json())
        .execute(conn)
        .await?;
    Ok(())
}

struct Ctx {
    pool: PgPool,
    plain: Repository<Deal>,
    cached: Repository<Deal>,
    default: Repository<Deal>,
    grouped: Repository<Deal>,
}

/// Creates the stream the way `method` writes (outside the timing).
async fn create(ctx: &Ctx, method: Method, stream: &StreamId) -> Result<(), BenchError> {
    match method {
        Method::Repository => {
            ctx.plain.execute(stream, DealCommand::Create).await?;
        }
        Method::Cached => {
            ctx.cached.execute(stream, DealCommand::Create).await?;
        }
        Method::Default => {
            ctx.default.execute(stream, DealCommand::Create).await?;
        }
        Method::Grouped => {
            ctx.grouped.execute(stream, DealCommand::Create).await?;
        }
        Method::RawReadInsert | Method::RawInsert => {
            let event = EventData::from_event(&DealEvent::Created, Metadata::default())?;
            let mut conn = ctx.pool.acquire().await?;
            raw_insert(&mut conn, stream.as_str(), 1, &event).await?;
        }
    }
    Ok(())
}

/// One writer: `commands` Configure commands on its stream (at version 1 when it starts).
async fn writer(
    ctx: Arc<Ctx>,
    method: Method,
    n: u64,
    stream: StreamId,
    commands: usize,
) -> Result<(), BenchError> {
    for i in 0..commands {
        let version = i as u64 + 2;
        let command = deal_command(n, version);
        match method {
            Method::Repository => {
                ctx.plain.execute(&stream, command).await?;
            }
            Method::Cached => {
                ctx.cached.execute(&stream, command).await?;
            }
            Method::Default => {
                ctx.default.execute(&stream, command).await?;
            }
            Method::Grouped => {
                ctx.grouped.execute(&stream, command).await?;
            }
            Method::RawReadInsert => {
                let mut tx = ctx.pool.begin().await?;
                let rows: Vec<(String, Value)> = sqlx::query_as(RAW_READ)
                    .bind(stream.as_str())
                    .fetch_all(&mut *tx)
                    .await?;
                let mut deal = Deal::default();
                let current = rows.len() as u64;
                for (event_type, payload) in rows {
                    deal.apply(&DealEvent::decode(&event_type, payload)?);
                }
                let events = deal
                    .handle(command)
                    .map_err(|e| format!("the deal refused: {e}"))?;
                for (k, event) in events.iter().enumerate() {
                    let data = EventData::from_event(event, Metadata::default())?;
                    raw_insert(&mut tx, stream.as_str(), current + 1 + k as u64, &data).await?;
                }
                tx.commit().await?;
            }
            Method::RawInsert => {
                let DealCommand::Configure { fields } = command else {
                    unreachable!("only Configure commands are run")
                };
                let data =
                    EventData::from_event(&DealEvent::Configured { fields }, Metadata::default())?;
                let mut conn = ctx.pool.acquire().await?;
                raw_insert(&mut conn, stream.as_str(), version, &data).await?;
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Hot {
    elapsed: Samples,
    succeeded: u64,
    failed: u64,
    attempts: u64,
    retried: u64,
    max_attempts: u32,
}

/// Runs the scenario on a fresh database and writes its section to `args.out`.
pub async fn run(url: &str, args: Args) -> Result<(), BenchError> {
    check(args.repetitions > 0, "--repetitions must be at least 1")?;
    let section = with_fresh_database(url, 24, |pool| measure(pool, &args)).await?;
    write_section(&args.out, &section)
}

async fn measure(pool: PgPool, args: &Args) -> Result<String, BenchError> {
    let alone = PgEventStore::new(pool.clone()).without_group_commit();
    let registry = Arc::new(upcasters());
    let ctx = Arc::new(Ctx {
        pool: pool.clone(),
        plain: Repository::<Deal>::new(alone.clone())
            .with_upcasters(registry.clone())
            .without_cache(),
        cached: Repository::<Deal>::new(alone.clone()).with_upcasters(registry.clone()),
        // What a user gets with no opt-in (the Deal's upcasters are its event types).
        default: Repository::<Deal>::new(PgEventStore::new(pool.clone()))
            .with_upcasters(registry.clone()),
        grouped: Repository::<Deal>::new(PgEventStore::new(pool.clone()).with_group_commit(
            GroupCommit {
                alone_when_idle: false,
                ..GroupCommit::default()
            },
        ))
        .with_upcasters(registry.clone()),
    });
    // samples[w][m]: writers WRITERS[w], method METHODS[m].
    let mut samples: Vec<Vec<Samples>> =
        vec![vec![Samples::default(); METHODS.len()]; WRITERS.len()];
    // Client CPU time (this process, user + system) spent in measured repetitions.
    let mut cpu: Vec<Vec<Duration>> = vec![vec![Duration::ZERO; METHODS.len()]; WRITERS.len()];
    let mut n = 0u64;
    let started = Instant::now();
    let rounds = args.warmup + args.repetitions;
    for round in 0..rounds {
        for (w, &writers) in WRITERS.iter().enumerate() {
            for k in 0..METHODS.len() {
                let m = (k + round + w) % METHODS.len();
                let method = METHODS[m];
                let mut streams = Vec::with_capacity(writers);
                for _ in 0..writers {
                    n += 1;
                    let stream = StreamId::new(format!("deal-c{n}"))?;
                    create(&ctx, method, &stream).await?;
                    streams.push((n, stream));
                }
                let per_writer = args.commands / writers;
                let cpu_before = process_cpu();
                let t = Instant::now();
                let tasks: Vec<_> = streams
                    .into_iter()
                    .map(|(n, stream)| {
                        tokio::spawn(writer(ctx.clone(), method, n, stream, per_writer))
                    })
                    .collect();
                for task in tasks {
                    task.await??;
                }
                if round >= args.warmup {
                    samples[w][m].push(t.elapsed());
                    cpu[w][m] += process_cpu().saturating_sub(cpu_before);
                }
            }
        }
        eprintln!(
            "round {}/{rounds} ({:.0} s)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }

    // The hot stream: 16 writers on one stream, each through the same repository.
    let mut hot = [Hot::default(), Hot::default()];
    for round in 0..rounds {
        for (h, cached) in [(0usize, false), (1, true)] {
            n += 1;
            let stream = StreamId::new(format!("deal-hot{n}"))?;
            let repo = if cached { &ctx.default } else { &ctx.plain };
            repo.execute(&stream, DealCommand::Create).await?;
            let t = Instant::now();
            let tasks: Vec<_> = (0..16u64)
                .map(|writer| {
                    let ctx = ctx.clone();
                    let stream = stream.clone();
                    let commands = args.hot_commands;
                    tokio::spawn(async move {
                        let repo = if cached { &ctx.default } else { &ctx.plain };
                        let mut outcomes = Vec::with_capacity(commands);
                        for i in 0..commands {
                            let command = deal_command(writer, i as u64 + 2);
                            outcomes.push(match repo.execute(&stream, command).await {
                                Ok(outcome) => Ok(outcome.attempts),
                                Err(RepositoryError::TooManyConflicts { .. }) => Err(()),
                                Err(other) => return Err(BenchError::from(other.to_string())),
                            });
                        }
                        Ok(outcomes)
                    })
                })
                .collect();
            let mut outcomes = Vec::new();
            for task in tasks {
                outcomes.extend(task.await??);
            }
            let elapsed = t.elapsed();
            if round >= args.warmup {
                let hot = &mut hot[h];
                hot.elapsed.push(elapsed);
                for outcome in outcomes {
                    match outcome {
                        Ok(attempts) => {
                            hot.succeeded += 1;
                            hot.attempts += u64::from(attempts);
                            hot.retried += u64::from(attempts > 1);
                            hot.max_attempts = hot.max_attempts.max(attempts);
                        }
                        Err(()) => hot.failed += 1,
                    }
                }
            }
        }
    }
    let server = server_times(&pool).await?;
    Ok(section(
        args,
        &samples,
        &cpu,
        &hot,
        &server,
        started.elapsed(),
    ))
}

/// CPU time of this process so far (user + system), from `/proc/self/stat` (clock ticks of
/// 10 ms); zero where unreadable.
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The statement `PgEventStore` appends with when the expected version is exact (the command
/// path), read from es-postgres' sources.
const APPEND_SQL: &str = include_str!("../../../es-postgres/src/sql/append_exact.sql");

/// Server-side planning + execution time of one single-event append (the store's statement,
/// exact expected version) and of the raw single-row INSERT, each run `N` times alternately
/// under `EXPLAIN (ANALYZE)` inside a transaction that is rolled back: medians.
/// Returns [append execution, raw execution, append planning, raw planning].
async fn server_times(pool: &PgPool) -> Result<[Samples; 4], BenchError> {
    const N: usize = 200;
    let mut out: [Samples; 4] = Default::default();
    let mut tx = pool.begin().await?;
    let data = EventData::from_event(
        &DealEvent::Configured {
            fields: configured_fields(1, 2),
        },
        Metadata::default(),
    )?;
    for i in 0..N {
        let stream = format!("deal-explain{i}");
        for k in 0..2 {
            let stream = format!("{stream}-{k}");
            let plan: Value = if k == 0 {
                sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {APPEND_SQL}"))
                    .bind(&stream)
                    .bind(0i64)
                    .bind(vec![uuid::Uuid::now_v7()])
                    .bind(vec![data.event_type.clone()])
                    .bind(vec![data.schema_version as i32])
                    .bind(vec![data.payload.clone()])
                    .bind(vec![data.metadata.to_json()])
                    .fetch_one(&mut *tx)
                    .await?
            } else {
                sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {RAW_INSERT}"))
                    .bind(uuid::Uuid::now_v7())
                    .bind(&stream)
                    .bind(1i64)
                    .bind(&data.event_type)
                    .bind(data.schema_version as i32)
                    .bind(&data.payload)
                    .bind(data.metadata.to_json())
                    .fetch_one(&mut *tx)
                    .await?
            };
            let ms = |key: &str| plan[0][key].as_f64().unwrap_or(0.0);
            out[k].push(Duration::from_secs_f64(ms("Execution Time") / 1000.0));
            out[k + 2].push(Duration::from_secs_f64(ms("Planning Time") / 1000.0));
        }
    }
    tx.rollback().await?;
    Ok(out)
}

fn section(
    args: &Args,
    samples: &[Vec<Samples>],
    cpu: &[Vec<Duration>],
    hot: &[Hot; 2],
    server: &[Samples; 4],
    elapsed: Duration,
) -> String {
    let names = [
        "`without_cache()`, store `without_group_commit()` (old default)",
        "cache, store `without_group_commit()`",
        "raw read stream + INSERT next version",
        "raw single-row INSERT, no read",
        "**default** (cache + adaptive group commit)",
        "cache, every append through the committers",
    ];
    let mut table = Table::new(&[
        ">writers",
        "method",
        ">commands/s",
        ">p10 – p90",
        ">/ raw read + INSERT",
        ">/ raw INSERT",
        ">client CPU per command",
    ]);
    let (mut target, mut grouped, mut lone) = (0.0, 0.0, 0.0);
    for (w, &writers) in WRITERS.iter().enumerate() {
        let commands = (args.commands / writers * writers) as u64;
        let rates: Vec<f64> = samples[w]
            .iter()
            .map(|s| rate_median(commands, s))
            .collect();
        for (m, name) in names.iter().enumerate() {
            let of = |other: f64| if other > 0.0 { rates[m] / other } else { 0.0 };
            table.row(vec![
                count(writers as u64),
                name.to_string(),
                rate(rates[m]),
                rate_spread(commands, &samples[w][m]),
                times(of(rates[2])),
                times(of(rates[3])),
                format!(
                    "{:.0} µs",
                    cpu[w][m].as_secs_f64() * 1e6
                        / (commands * samples[w][m].len().max(1) as u64) as f64
                ),
            ]);
        }
        if writers == 16 && rates[3] > 0.0 {
            target = rates[4] / rates[3];
            grouped = rates[5] / rates[3];
        }
        if writers == 1 && rates[3] > 0.0 {
            lone = rates[4] / rates[3];
        }
    }
    let mut hot_table = Table::new(&[
        "repository",
        ">successful commands/s",
        ">p10 – p90",
        ">commands",
        ">needed a retry",
        ">mean attempts",
        ">most attempts",
        ">failed (too many conflicts)",
    ]);
    for (h, name) in ["`without_cache()`, no group commit", "default"]
        .iter()
        .enumerate()
    {
        let hot = &hot[h];
        let total = hot.succeeded + hot.failed;
        let reps = hot.elapsed.len().max(1) as u64;
        let per_rep = hot.succeeded / reps;
        hot_table.row(vec![
            name.to_string(),
            rate(rate_median(per_rep, &hot.elapsed)),
            rate_spread(per_rep, &hot.elapsed),
            count(total),
            format!(
                "{:.0} %",
                100.0 * hot.retried as f64 / hot.succeeded.max(1) as f64
            ),
            format!("{:.2}", hot.attempts as f64 / hot.succeeded.max(1) as f64),
            count(u64::from(hot.max_attempts)),
            count(hot.failed),
        ]);
    }
    format!(
        "## Command path (`es-bench command`)\n\
         \n\
         `Repository::execute` on the Deal aggregate (load the stream, fold, `handle` a \
         `Configure` command, append its one event with the loaded version; the store sends \
         NOTIFY after each append, as in an application) against raw PostgreSQL doing the same \
         work: **raw read + INSERT** (one transaction per command: select the stream's rows, \
         fold them into the same `Deal`, handle the command, insert the event at the next \
         version) and **raw INSERT** (one single-row INSERT per transaction, no read: the floor, \
         one commit per command). {commands} commands per repetition shared among the writers, \
         each writer on its own stream created just before (so streams grow from 1 to about \
         {longest} events during a repetition of one writer, {shortest} with 16). Methods \
         round-robin, {reps} repetitions after {warmup} warm-up ({secs:.0} s in all); \
         commands/s of the median repetition.\n\
         \n\
         **Targets:** the default configuration (`Repository::new(PgEventStore::new(pool))`, \
         no opt-in) with 16 writers on distinct streams at least 1.5× raw single-row INSERT \
         per transaction: {verdict}; with 1 writer at least 0.95× raw INSERT: {lone_verdict}. \
         (For comparison, every append through the committers at 16 writers: {grouped}.)\n\
         \n\
         {table}\n\
         **16 writers on one hot stream**, {hot} commands each per repetition, through one \
         repository (default retry policy: 8 attempts, jittered backoff from 1 ms, capped at \
         100 ms). A conflicting append writes nothing; the command is reloaded and decided \
         again.\n\
         \n\
         {hot_table}\n\
         With one writer per stream there are no conflicts; the cache turns every command \
         after the first into an append alone (no read), which is why it tracks raw INSERT \
         while the uncached path tracks raw read + INSERT. The default adds the store's \
         adaptive group commit: an append that finds no other in flight is written at once by \
         its own task (one writer pays nothing for grouping), and appends arriving while others \
         are in flight are written together, one statement and one transaction (each still \
         checked against its own expected version, whole or not at all): with many writers it \
         takes fewer commits than commands, which is how it passes raw INSERT's one commit per \
         command. On the hot stream the cache cannot help: most appends find the cached \
         version stale, conflict, and reload.\n\
         \n\
         Where the gap to raw INSERT comes from (16 writers, 2 cores shared by client and \
         server): the column *client CPU per command* is this process's user + system time per \
         command (`/proc/self/stat`, 10 ms ticks summed over every measured command). On the \
         server, the execution time of one single-event statement, measured with `EXPLAIN \
         (ANALYZE)` {n} times each in a rolled-back transaction (medians, no commit), is \
         {append_ms} for the store's append (`append_exact.sql`: the version check as an index \
         probe for the expected version, `unnest` of five arrays, `RETURNING`) against {insert_ms} for the raw INSERT \
         (planning, which a prepared statement mostly skips: {append_plan} against \
         {insert_plan}). With both committing the same way (one WAL flush per command) and \
         client and server sharing two cores, the gap is that server work plus the client's: \
         encoding the event and its size check, binding five arrays, decoding the result, and \
         the command's clone, fold and cache update.\n",
        commands = args.commands,
        longest = args.commands + 1,
        shortest = args.commands / 16 + 1,
        reps = args.repetitions,
        warmup = args.warmup,
        secs = elapsed.as_secs_f64(),
        verdict = verdict_at_least(target, 1.5, "×"),
        lone_verdict = verdict_at_least(lone, 0.95, "×"),
        grouped = times(grouped),
        table = table.to_markdown(),
        hot = args.hot_commands,
        hot_table = hot_table.to_markdown(),
        n = server[0].len(),
        append_ms = ms(server[0].median()),
        insert_ms = ms(server[1].median()),
        append_plan = ms(server[2].median()),
        insert_plan = ms(server[3].median()),
    )
}
