//! `es-bench scale` (`scripts/bench --scale`): the Deal workload at ten times the real case
//! (800,000 deals, 20,000,000 events by default) and what must not degrade with the log's size.
//!
//! On one fresh database, in this order:
//!
//! 1. **append at an empty log**: 16 writers, each on fresh streams, appending 10 `Configured`
//!    events per append through `PgEventStore::append` (`ExpectedVersion::Exact`), about 8,000
//!    events per repetition, 7 repetitions, median events/s;
//! 2. the generator (`es_examples::deal::load`) builds the baseline log (80,000 deals, 2M
//!    events by default), `VACUUM ANALYZE`; a rebuild of `deals` in a child process
//!    (`es-bench rebuild-child`, as in `catchup`) gives its peak resident memory at that size;
//! 3. the generator grows the same log to the full size (new deals and more events for the old
//!    ones), `VACUUM ANALYZE`; the rebuild's peak memory again;
//! 4. **append at the full log**: the same measurement as 1;
//! 5. **`status` and `verify`** (`es_projections::status`, `es_projections::verify` of `deals`),
//!    median of 9 and of 3;
//! 6. **holes under 64 writers**: a live `Worker` tails while 64 writers append one event per
//!    transaction for 15 s; a poller reads the projection's cursor every millisecond and
//!    records the most hole ranges and hole positions it held, against the 64 transactions that
//!    can be in flight.
//!
//! Disk and time are reported from the database's size and the wall clock.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::{EventData, EventStore, ExpectedVersion, Metadata, StreamId, StreamVersion};
use es_examples::deal::{configured_fields, load, DealEvent, DealsProjector, LoadOptions};
use es_postgres::PgEventStore;
use es_projections::{Worker, WorkerConfig};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::common::{check, mib, per_second, rate, verdict_at_least, write_section};
use crate::fresh_db::with_fresh_database;
use crate::report::{count, ms, Table};
use crate::stats::Samples;
use crate::BenchError;

/// Options of `es-bench scale`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the markdown section.
    #[arg(long)]
    out: PathBuf,
    /// Events of the full log.
    #[arg(long, default_value_t = 20_000_000)]
    scale_events: u64,
    /// Deals of the full log (the real case's 25 events per deal: `scale_events / 25` when 0).
    #[arg(long, default_value_t = 0)]
    scale_deals: u64,
    /// Events of the baseline log the rebuild's memory is compared with (the real case).
    #[arg(long, default_value_t = 2_000_000)]
    baseline_events: u64,
    /// Writers of the hole measurement.
    #[arg(long, default_value_t = 64)]
    hole_writers: usize,
    /// Seconds of the hole measurement.
    #[arg(long, default_value_t = 15)]
    hole_seconds: u64,
}

struct Memory {
    events: u64,
    peak_kib: u64,
    elapsed: Duration,
}

/// Runs the scenario and writes its section.
pub async fn run(url: &str, args: Args) -> Result<(), BenchError> {
    check(
        args.baseline_events < args.scale_events,
        "--baseline-events must be below --scale-events",
    )?;
    let section = with_fresh_database(url, 80, |pool| measure(url, pool, &args)).await?;
    write_section(&args.out, &section)
}

async fn measure(url: &str, pool: PgPool, args: &Args) -> Result<String, BenchError> {
    let started = Instant::now();
    let deals = if args.scale_deals == 0 {
        (args.scale_events / 25).max(1)
    } else {
        args.scale_deals
    };
    let base_deals = (deals * args.baseline_events / args.scale_events).max(1);
    let mut stream_no = 0u64;
    let empty = append_rate(&pool, &mut stream_no).await?;
    eprintln!("append at an empty log: {}", rate(empty));

    let t = Instant::now();
    grow(&pool, base_deals, args.baseline_events).await?;
    let base_generated = t.elapsed();
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await?;
    let base_memory = rebuild_memory(url, &database, &pool).await?;

    let t = Instant::now();
    grow(&pool, deals, args.scale_events).await?;
    let full_generated = t.elapsed();
    let full_memory = rebuild_memory(url, &database, &pool).await?;
    let disk: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&pool)
        .await?;
    let log_events: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events")
        .fetch_one(&pool)
        .await?;

    let at_scale = append_rate(&pool, &mut stream_no).await?;
    eprintln!(
        "append at {} events: {}",
        count(log_events as u64),
        rate(at_scale)
    );

    let worker_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(PgConnectOptions::from_str(url)?.database(&database))
        .await?;
    let worker = Worker::new(worker_pool.clone(), es_examples::upcasters())
        .projection(DealsProjector)?
        .with_config(WorkerConfig::default());
    let mut status = Samples::default();
    for _ in 0..9 {
        let t = Instant::now();
        es_projections::status(&pool).await?;
        status.push(t.elapsed());
    }
    let mut verify = Samples::default();
    for _ in 0..3 {
        let t = Instant::now();
        let report = es_projections::verify(&worker, "deals").await?;
        verify.push(t.elapsed());
        check(report.ok(), "verify found the projection incomplete")?;
    }
    let holes = holes_under_writers(&pool, worker, args).await?;
    worker_pool.close().await;
    Ok(section(
        args,
        Figures {
            deals,
            log_events: log_events as u64,
            empty,
            at_scale,
            base_memory,
            full_memory,
            status,
            verify,
            holes,
            disk_bytes: disk as u64,
            base_generated,
            full_generated,
            total: started.elapsed(),
        },
    ))
}

/// Grows the log to `deals` deals and `events` events with the example's generator.
async fn grow(pool: &PgPool, deals: u64, events: u64) -> Result<(), BenchError> {
    let t = Instant::now();
    let options = LoadOptions {
        deals,
        events,
        concurrency: 4,
        append_batch: 500,
    };
    let last_print = std::sync::Mutex::new(Instant::now());
    load(pool, &options, |done| {
        let mut last = last_print.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() > Duration::from_secs(30) {
            *last = Instant::now();
            eprintln!("generating: {} of {} events", count(done), count(events));
        }
    })
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE es_events")
        .execute(pool)
        .await?;
    sqlx::raw_sql("CHECKPOINT").execute(pool).await.ok();
    eprintln!(
        "log at {} events ({} deals) after {:.0} s",
        count(events),
        count(deals),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Median events/s of 16 writers appending 10 events per append to fresh streams.
async fn append_rate(pool: &PgPool, stream_no: &mut u64) -> Result<f64, BenchError> {
    const WRITERS: u64 = 16;
    const APPENDS: u64 = 50;
    const BATCH: u64 = 10;
    let store = PgEventStore::new(pool.clone());
    let mut samples = Samples::default();
    for round in 0..8 {
        let mut tasks = tokio::task::JoinSet::new();
        let mut inputs = Vec::new();
        for _ in 0..WRITERS {
            *stream_no += 1;
            let n = *stream_no;
            let mut batches = Vec::new();
            for a in 0..APPENDS {
                let mut events = Vec::new();
                for i in 0..BATCH {
                    events.push(EventData::from_event(
                        &DealEvent::Configured {
                            fields: configured_fields(n, a * BATCH + i),
                        },
                        Metadata::default(),
                    )?);
                }
                batches.push(events);
            }
            inputs.push((StreamId::new(format!("deal-s{n}"))?, batches));
        }
        let t = Instant::now();
        for (stream, batches) in inputs {
            let store = store.clone();
            tasks.spawn(async move {
                let mut version = 0u64;
                for events in batches {
                    let expected = if version == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(StreamVersion(version))
                    };
                    version += events.len() as u64;
                    store.append(&stream, expected, events).await?;
                }
                Ok::<_, BenchError>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        // The first round warms the pool and the plans.
        if round > 0 {
            samples.push(t.elapsed());
        }
    }
    Ok(per_second(WRITERS * APPENDS * BATCH, samples.median()))
}

async fn rebuild_memory(url: &str, database: &str, pool: &PgPool) -> Result<Memory, BenchError> {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events")
        .fetch_one(pool)
        .await?;
    let report = super::catchup::rebuild_in_child(url, database).await?;
    eprintln!(
        "rebuilt {} events in {:.1} s, peak RSS {}",
        count(report.applied),
        report.elapsed_us as f64 / 1e6,
        mib(report.hwm_after_kib)
    );
    Ok(Memory {
        events: events as u64,
        peak_kib: report.hwm_after_kib,
        elapsed: Duration::from_micros(report.elapsed_us),
    })
}

struct Holes {
    max_ranges: usize,
    max_positions: i64,
    max_in_flight: usize,
    appended: u64,
    samples: u64,
}

/// A live worker tails while `hole_writers` writers append one event per transaction; the most
/// holes its cursor held.
async fn holes_under_writers(
    pool: &PgPool,
    worker: Worker,
    args: &Args,
) -> Result<Holes, BenchError> {
    let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(async move {
        worker
            .run(async {
                stopped.await.ok();
            })
            .await
    });
    es_examples::deal::wait_caught_up(pool, "deals", Duration::from_millis(100), |_, _| {}).await?;
    let store = PgEventStore::new(pool.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..args.hole_writers {
        let (store, stop, in_flight, max_in_flight) = (
            store.clone(),
            stop.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
        );
        writers.spawn(async move {
            let stream = StreamId::new(format!("deal-h{w}"))?;
            let mut appended = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let event = EventData::from_event(
                    &DealEvent::Configured {
                        fields: configured_fields(w as u64, appended),
                    },
                    Metadata::default(),
                )?;
                let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                max_in_flight.fetch_max(now, Ordering::Relaxed);
                let result = store
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                result?;
                appended += 1;
            }
            Ok::<_, BenchError>(appended)
        });
    }
    let mut holes = Holes {
        max_ranges: 0,
        max_positions: 0,
        max_in_flight: 0,
        appended: 0,
        samples: 0,
    };
    let until = Instant::now() + Duration::from_secs(args.hole_seconds);
    while Instant::now() < until {
        if let Some(cursor) = es_projections::live_cursor(pool, "deals").await? {
            holes.max_ranges = holes.max_ranges.max(cursor.holes.len());
            holes.max_positions = holes.max_positions.max(cursor.hole_positions());
            holes.samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = writers.join_next().await {
        holes.appended += done??;
    }
    holes.max_in_flight = max_in_flight.load(Ordering::Relaxed);
    stop_worker.send(()).ok();
    worker_task.await??;
    Ok(holes)
}

struct Figures {
    deals: u64,
    log_events: u64,
    empty: f64,
    at_scale: f64,
    base_memory: Memory,
    full_memory: Memory,
    status: Samples,
    verify: Samples,
    holes: Holes,
    disk_bytes: u64,
    base_generated: Duration,
    full_generated: Duration,
    total: Duration,
}

fn section(args: &Args, f: Figures) -> String {
    let append_ratio = if f.empty > 0.0 {
        f.at_scale / f.empty
    } else {
        0.0
    };
    let status_ms = f.status.median().as_secs_f64() * 1000.0;
    let status_verdict = if status_ms < 50.0 {
        format!("**met** ({status_ms:.1} ms)")
    } else {
        format!(
            "**missed** ({status_ms:.1} ms, {:.0} % over)",
            (status_ms / 50.0 - 1.0) * 100.0
        )
    };
    let memory_ratio = f.full_memory.peak_kib as f64 / f.base_memory.peak_kib.max(1) as f64;
    let memory_verdict = if memory_ratio <= 1.25 {
        "**the same** (met)"
    } else {
        "**grows** (missed)"
    };
    let holes_ok = f.holes.max_ranges <= args.hole_writers;
    let mut table = Table::new(&[
        ">events in the log",
        ">append, 16 writers × 10 events",
        ">rebuild",
        ">rebuild peak RSS",
    ]);
    table.row(vec!["0".into(), rate(f.empty), "–".into(), "–".into()]);
    table.row(vec![
        count(f.base_memory.events),
        "–".into(),
        format!(
            "{} ({:.1} s)",
            rate(per_second(f.base_memory.events, f.base_memory.elapsed)),
            f.base_memory.elapsed.as_secs_f64()
        ),
        mib(f.base_memory.peak_kib),
    ]);
    table.row(vec![
        count(f.log_events),
        rate(f.at_scale),
        format!(
            "{} ({:.1} s)",
            rate(per_second(f.full_memory.events, f.full_memory.elapsed)),
            f.full_memory.elapsed.as_secs_f64()
        ),
        mib(f.full_memory.peak_kib),
    ]);
    let reduced = if args.scale_events < 20_000_000 {
        format!(
            " **Run at a reduced size** (`--scale-events {}`): the default is 20,000,000.",
            args.scale_events
        )
    } else {
        String::new()
    };
    format!(
        "## Scale: the Deal workload at {events} events (`es-bench scale`)\n\
         \n\
         One database grown by the example's generator to {deals} deals and {events} events \
         (first to {base} events, for the memory baseline: the real case's size by default), then \
         measured there.{reduced} It took {total:.0} s in all ({base_gen:.0} s and {full_gen:.0} s \
         to generate) and {disk:.1} GiB of disk for the database (log, indexes, read table).\n\
         \n\
         **Targets:** append throughput at {events} events at least 0.8× at an empty log: \
         {append_verdict}; `status` under 50 ms: {status_verdict} (median of {n_status}; \
         `verify` of `deals`: {verify}, median of {n_verify}, it reads the applied-ranges ledger \
         and the log only in its gaps); rebuild peak memory the same as at {base} events: \
         {mib_base} there, {mib_full} here ({memory_ratio:.2}×): {memory_verdict}; with \
         {writers} writers (one event per transaction, {hole_secs} s, {appended} events, at most \
         {in_flight} appends in flight) the cursor of a live worker held at most {ranges} hole \
         ranges ({positions} positions) in {samples} reads: {holes_verdict}.\n\
         \n\
         {table}",
        events = count(f.log_events),
        deals = count(f.deals),
        base = count(f.base_memory.events),
        total = f.total.as_secs_f64(),
        base_gen = f.base_generated.as_secs_f64(),
        full_gen = f.full_generated.as_secs_f64(),
        disk = f.disk_bytes as f64 / (1u64 << 30) as f64,
        append_verdict = verdict_at_least(append_ratio, 0.8, "×"),
        n_status = f.status.len(),
        verify = ms(f.verify.median()),
        n_verify = f.verify.len(),
        mib_base = mib(f.base_memory.peak_kib),
        mib_full = mib(f.full_memory.peak_kib),
        writers = args.hole_writers,
        hole_secs = args.hole_seconds,
        appended = count(f.holes.appended),
        in_flight = f.holes.max_in_flight,
        ranges = f.holes.max_ranges,
        positions = f.holes.max_positions,
        samples = count(f.holes.samples),
        holes_verdict = if holes_ok {
            format!(
                "**bounded** by the {} transactions in flight (met)",
                args.hole_writers
            )
        } else {
            "**more holes than transactions in flight** (missed)".to_string()
        },
        table = table.to_markdown(),
    )
}
