//! `es-bench lag`: live projection lag, from an append's commit to its row being readable, at
//! steady write rates.
//!
//! 16 writers (by default) append `Configured` events to 500 deal streams, each writer on its
//! own share of the streams, paced at its share of a steady total rate (5,000 and 10,000
//! events/s by default, a minute each): whenever events are due a writer appends them in one
//! append (at most `--max-batch`), so a slow commit makes the next append bigger rather than the
//! pace slower. A `Worker` with `DealsProjector` and the default `WorkerConfig` runs in the same
//! process, woken by NOTIFY. One poller reads the projection's live checkpoint every
//! millisecond; an event's lag is the time from its append returning (its transaction
//! committed) to the end of the first checkpoint read that covers the append's last global
//! position (the checkpoint commits with the batch's rows, so the row is readable then). The
//! figures are upper bounds by at most one poll (about 1 ms).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use es_core::{EventData, EventStore, ExpectedVersion, Metadata, StreamId};
use es_examples::deal::{configured_fields, DealEvent, DealsProjector};
use es_postgres::PgEventStore;
use es_projections::{Worker, WorkerConfig};
use futures::{StreamExt, TryStreamExt};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::common::{check, noisy_note_of, rate, write_section};
use crate::fresh_db::with_fresh_database;
use crate::noise::Noise;
use crate::report::{count, ms, Table};
use crate::stats::Samples;
use crate::svg::{line_chart, Axis, Marker, Series};
use crate::BenchError;

/// Options of `es-bench lag`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the markdown section.
    #[arg(long)]
    out: PathBuf,
    /// Where to write the chart (the section links to it by file name: keep it next to the
    /// markdown it ends up in).
    #[arg(long, default_value = "docs/benchmarks-lag.svg")]
    svg: PathBuf,
    /// Write rates in events/s (all writers together), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [5_000u64, 10_000])]
    rates: Vec<u64>,
    /// Concurrent writers, each on its own share of the streams, paced at its share of the
    /// rate.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// The most events one append carries (a writer appends what is due in one append).
    #[arg(long, default_value_t = 100)]
    max_batch: usize,
    /// Measured seconds per rate.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Unmeasured seconds at the rate first.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Deal streams written round-robin.
    #[arg(long, default_value_t = 500)]
    streams: u64,
}

/// An append waiting to be seen.
#[derive(Clone, Copy, Debug)]
struct Appended {
    /// When it returned (committed).
    returned: Instant,
    /// In the measured window, or the warm-up.
    measured: bool,
    /// Its events (each gets the append's lag).
    events: u64,
}

/// Appends waiting to be seen, by the global position of their last event.
type Pending = Arc<Mutex<BTreeMap<i64, Appended>>>;

struct RateResult {
    rate: u64,
    lags: Samples,
    append_latency: Samples,
    /// Events appended in the measured window.
    appended: u64,
    /// Appends in the measured window.
    appends: u64,
    window: Duration,
    noise: Option<Noise>,
}

/// Runs the scenario on a fresh database and writes its section to `args.out`.
pub async fn run(url: &str, args: Args) -> Result<(), BenchError> {
    check(!args.rates.is_empty(), "--rates must name a rate")?;
    check(args.streams > 0, "--streams must be at least 1")?;
    let results = with_fresh_database(url, 64, |pool| measure(pool, &args)).await?;
    if let Some(parent) = args.svg.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.svg, chart(&results))?;
    eprintln!("wrote {}", args.svg.display());
    write_section(&args.out, &section(&args, &results))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn measure(pool: PgPool, args: &Args) -> Result<Vec<RateResult>, BenchError> {
    let store = PgEventStore::new(pool.clone());
    // The streams exist before the worker starts.
    let created: Vec<()> = futures::stream::iter(1..=args.streams)
        .map(|n| {
            let store = store.clone();
            async move {
                let stream = StreamId::new(format!("deal-{n}"))?;
                let event = EventData::from_event(&DealEvent::Created, Metadata::default())?;
                store
                    .append(&stream, ExpectedVersion::NoStream, vec![event])
                    .await?;
                Ok::<_, BenchError>(())
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    check(
        created.len() as u64 == args.streams,
        "not every stream was created",
    )?;

    // The worker and the poller get pools of their own, as a worker process would: the
    // writer's appends in flight must not hold the connections they need.
    let options = (*pool.connect_options()).clone();
    let worker_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options.clone())
        .await?;
    let poller_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let worker = Worker::new(worker_pool.clone(), es_examples::upcasters())
        .projection(DealsProjector)?
        .with_config(WorkerConfig::default());
    let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(async move {
        worker
            .run(async {
                stopped.await.ok();
            })
            .await
    });
    tokio::time::timeout(
        Duration::from_secs(60),
        es_examples::deal::wait_caught_up(&pool, "deals", Duration::from_millis(50), |_, _| {}),
    )
    .await
    .map_err(|_| "the worker did not catch up within 60 s")??;

    let mut results = Vec::new();
    let mut version_seed = 0u64;
    for &rate in &args.rates {
        let result = run_rate(&poller_pool, &store, args, rate, &mut version_seed).await?;
        eprintln!(
            "{rate}/s: {} appends measured, lag p50 {} p99 {} max {}",
            result.lags.len(),
            ms(result.lags.quantile(0.5)),
            ms(result.lags.quantile(0.99)),
            ms(result.lags.quantile(1.0))
        );
        results.push(result);
    }
    stop_worker.send(()).ok();
    worker_task.await??;
    worker_pool.close().await;
    poller_pool.close().await;
    Ok(results)
}

async fn run_rate(
    pool: &PgPool,
    store: &PgEventStore,
    args: &Args,
    rate: u64,
    seed: &mut u64,
) -> Result<RateResult, BenchError> {
    let pending: Pending = Arc::new(Mutex::new(BTreeMap::new()));
    let lags = Arc::new(Mutex::new(Samples::default()));
    let latencies = Arc::new(Mutex::new(Samples::default()));

    // The poller: one checkpoint read per millisecond.
    let (stop_poller, mut poller_stop) = tokio::sync::watch::channel(false);
    let poller = {
        let pool = pool.clone();
        let pending = pending.clone();
        let lags = lags.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = poller_stop.changed() => break,
                }
                let cursor = es_projections::live_cursor(&pool, "deals").await?;
                let seen_at = Instant::now();
                let Some(cursor) = cursor else { continue };
                let mut pending = lock(&pending);
                let later = pending.split_off(&(cursor.watermark.0 + 1));
                let covered = std::mem::replace(&mut *pending, later);
                let mut lags = lock(&lags);
                for (position, appended) in covered {
                    if cursor.covers(es_core::GlobalPosition(position)) {
                        if appended.measured {
                            // Every event of the append became visible at once.
                            let lag = seen_at.saturating_duration_since(appended.returned);
                            for _ in 0..appended.events {
                                lags.push(lag);
                            }
                        }
                    } else {
                        pending.insert(position, appended);
                    }
                }
            }
            Ok::<_, BenchError>(())
        })
    };

    // The writers: each paced at its share of the rate, appending what is due in one append.
    let warmup = Duration::from_secs(args.warmup);
    let window = Duration::from_secs(args.seconds);
    let writers = args.writers.max(1);
    let per_writer = rate as f64 / writers as f64;
    let monitor = crate::noise::start();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let store = store.clone();
        let pending = pending.clone();
        let latencies = latencies.clone();
        let streams: Vec<u64> = (1..=args.streams)
            .filter(|n| n % writers as u64 == w as u64)
            .collect();
        let first_seed = *seed + w as u64 * 10_000_000;
        let cap = args.max_batch.max(1) as u64;
        tasks.spawn(async move {
            let mut sent = 0u64;
            let mut measured_events = 0u64;
            let mut appends = 0u64;
            let mut seed = first_seed;
            let mut next_stream = 0usize;
            while started.elapsed() < warmup + window {
                let elapsed = started.elapsed();
                let due = (elapsed.as_secs_f64() * per_writer) as u64;
                if sent >= due || streams.is_empty() {
                    // Sleep until the next event is due.
                    let next = (sent + 1) as f64 / per_writer;
                    let wait = Duration::from_secs_f64(next).saturating_sub(elapsed);
                    tokio::time::sleep(wait.max(Duration::from_micros(200))).await;
                    continue;
                }
                let k = (due - sent).min(cap);
                let n = streams[next_stream % streams.len()];
                next_stream += 1;
                let stream = StreamId::new(format!("deal-{n}"))?;
                let mut events = Vec::with_capacity(k as usize);
                for _ in 0..k {
                    seed += 1;
                    events.push(EventData::from_event(
                        &DealEvent::Configured {
                            fields: configured_fields(n, seed),
                        },
                        Metadata::default(),
                    )?);
                }
                let measured = elapsed >= warmup;
                let called = Instant::now();
                let appended = store.append(&stream, ExpectedVersion::Any, events).await?;
                let returned = Instant::now();
                lock(&pending).insert(
                    appended.global_position.0,
                    Appended {
                        returned,
                        measured,
                        events: k,
                    },
                );
                if measured {
                    lock(&latencies).push(returned - called);
                    measured_events += k;
                    appends += 1;
                }
                sent += k;
            }
            Ok::<_, BenchError>((measured_events, appends))
        });
    }
    let mut appended = 0u64;
    let mut appends = 0u64;
    while let Some(done) = tasks.join_next().await {
        let (events, n) = done??;
        appended += events;
        appends += n;
    }
    *seed += writers as u64 * 10_000_000;
    let elapsed_window = started.elapsed().saturating_sub(warmup);
    // Wait for the last appends to be seen.
    let drained = Instant::now();
    while !lock(&pending).is_empty() && drained.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let noise = monitor.so_far();
    stop_poller.send(true).ok();
    poller.await??;
    check(
        lock(&pending).is_empty(),
        "some appends were never seen by the worker within 30 s",
    )?;
    let lags = lock(&lags).clone();
    let append_latency = lock(&latencies).clone();
    Ok(RateResult {
        rate,
        lags,
        append_latency,
        appended,
        appends,
        window: elapsed_window,
        noise,
    })
}

fn chart(results: &[RateResult]) -> String {
    let max_ms = results
        .iter()
        .map(|r| r.lags.quantile(1.0).as_secs_f64() * 1000.0)
        .fold(1.0f64, f64::max);
    let top = 10f64.powf(max_ms.log10().ceil()).max(10.0);
    let series: Vec<Series> = results
        .iter()
        .map(|r| {
            let points = (0..=200)
                .map(|i| {
                    let q = i as f64 / 200.0;
                    (
                        (r.lags.quantile(q).as_secs_f64() * 1000.0).max(0.1),
                        q * 100.0,
                    )
                })
                .collect();
            Series {
                name: format!("{} events/s", count(r.rate)),
                points,
            }
        })
        .collect();
    line_chart(
        "Live lag: share of appends visible in the read table within x ms",
        &Axis {
            title: "lag from append commit to read row visible (ms, log scale)".into(),
            min: 0.1,
            max: top,
            log: true,
        },
        &Axis {
            title: "appends (%)".into(),
            min: 0.0,
            max: 100.0,
            log: false,
        },
        &series,
        &[Marker {
            x: 50.0,
            label: "target p99 ≤ 50 ms".into(),
        }],
    )
}

fn section(args: &Args, results: &[RateResult]) -> String {
    let mut table = Table::new(&[
        ">target rate",
        ">achieved",
        ">events measured",
        ">events per append",
        ">lag p50",
        ">lag p90",
        ">lag p99",
        ">lag max",
        ">append p50",
        ">append p99",
        "machine",
    ]);
    for r in results {
        table.row(vec![
            rate(r.rate as f64),
            rate(r.appended as f64 / r.window.as_secs_f64().max(1e-9)),
            count(r.lags.len() as u64),
            format!("{:.1}", r.appended as f64 / r.appends.max(1) as f64),
            ms(r.lags.quantile(0.5)),
            ms(r.lags.quantile(0.9)),
            ms(r.lags.quantile(0.99)),
            ms(r.lags.quantile(1.0)),
            ms(r.append_latency.quantile(0.5)),
            ms(r.append_latency.quantile(0.99)),
            r.noise.map_or("unknown".into(), |n| {
                format!("others {:.2} cores: {}", n.other, n.word())
            }),
        ]);
    }
    let verdict_at = |target_rate: u64| match results.iter().find(|r| r.rate == target_rate) {
        None => format!(
            "not measured ({} events/s not in this run)",
            count(target_rate)
        ),
        Some(r) => {
            let p99 = r.lags.quantile(0.99).as_secs_f64() * 1000.0;
            let achieved = r.appended as f64 / r.window.as_secs_f64().max(1e-9);
            let sustained = if achieved >= 0.95 * r.rate as f64 {
                String::new()
            } else {
                format!(" — *the writers reached only {} of it*", rate(achieved))
            };
            let verdict = if p99 <= 50.0 {
                format!("**met** (p99 {p99:.1} ms)")
            } else {
                format!(
                    "**missed** (p99 {p99:.1} ms, {:.0} % over)",
                    (p99 / 50.0 - 1.0) * 100.0
                )
            };
            format!("{verdict}{sustained}{}", noisy_note_of(r.noise))
        }
    };
    let svg_name = args
        .svg
        .file_name()
        .map_or("benchmarks-lag.svg".into(), |n| {
            n.to_string_lossy().into_owned()
        });
    format!(
        "## Live lag (`es-bench lag`)\n\
         \n\
         {writers} writers append `Configured` events (`ExpectedVersion::Any`, each append its \
         own transaction) to {streams} deal streams, each writer on its own share of the streams \
         round-robin and paced at its share of the rate: whenever events are due it appends \
         them, up to {max_batch}, in one append (so a slow commit makes the next append bigger, \
         not the pace slower). A `Worker` with `DealsProjector` and the default `WorkerConfig` \
         (batch 500, NOTIFY wake-ups, polling every 500 ms as the fallback) runs in the same \
         process on a pool of its own (4 connections, as a worker process would have; the \
         writers' pool has 64). One poller reads the projection's checkpoint every millisecond: \
         an event's lag is the time from its append returning (committed) to the end of the \
         first checkpoint read covering the append's last global position (the checkpoint \
         commits with the rows, so the read row is visible then): an upper bound, within about \
         one poll. {warmup} s at the rate unmeasured, then {secs} s measured, per rate. The \
         *machine* column is the CPU other processes used during that rate.\n\
         \n\
         **Target:** live lag p99 at most 50 ms with {writers} writers appending 5,000 events/s \
         in total, sustained for {secs} s: {verdict}. At 10,000 events/s (reported, no \
         target): {verdict_10k}.\n\
         \n\
         {table}\n\
         The distribution (share of events seen within x ms, log scale):\n\
         \n\
         ![Live lag distribution]({svg_name})\n",
        writers = args.writers,
        streams = args.streams,
        max_batch = args.max_batch,
        warmup = args.warmup,
        secs = args.seconds,
        verdict = verdict_at(5_000),
        verdict_10k = verdict_at(10_000),
        table = table.to_markdown(),
    )
}
