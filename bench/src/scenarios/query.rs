//! `es-bench query`: "deals with gasConsumption = 123" answered from the read table against
//! folding the events on every read, on the example's generated log.
//!
//! Three ways, round-robin, same answer required:
//!
//! - the read table: `SELECT deal_id FROM deals WHERE gas_consumption = 123` (typed, indexed
//!   column maintained by `DealsProjector`, filled by a rebuild beforehand);
//! - the repository: load every deal through `Repository<Deal>` (upcasting the legacy rows),
//!   filter on the folded state (`es_examples::deal::count_by_folding`, 4 loads in flight);
//! - a pure-SQL fold on read: the same fold as the `catchup` scenario's, filtered.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use es_examples::deal::{count_by_folding, Deal, DealsProjector};
use es_postgres::PgEventStore;
use es_projections::{rebuild, RebuildOptions, Worker};
use sqlx::PgPool;

use crate::common::{check, write_section};
use crate::fresh_db::with_fresh_database;
use crate::report::{count, ms, times, Table};
use crate::scenarios::catchup::generate;
use crate::stats::{ratio, Samples};
use crate::BenchError;

/// Options of `es-bench query`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the markdown section.
    #[arg(long)]
    out: PathBuf,
    /// Measured repetitions of the slow ways (the read table gets ten times as many).
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
    /// Deals in the log.
    #[arg(long, default_value_t = 2_000)]
    deals: u64,
    /// Events in the log.
    #[arg(long, default_value_t = 50_000)]
    events: u64,
    /// The full scale of the motivating case: 80,000 deals, 2,000,000 events.
    #[arg(long)]
    full: bool,
    /// The gasConsumption to look for.
    #[arg(long, default_value_t = 123)]
    gas: i64,
    /// Loads in flight when folding through the repository.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

const READ_TABLE: &str = "SELECT deal_id FROM deals WHERE gas_consumption = $1";

const SQL_FOLD_QUERY: &str = "SELECT count(*) FROM (
SELECT e.stream_id,
       coalesce(jsonb_object_agg(f.key, f.value ORDER BY e.stream_version)
                    FILTER (WHERE f.key IS NOT NULL), '{}'::jsonb) AS configuration
FROM es_events e
LEFT JOIN LATERAL jsonb_each(CASE
        WHEN e.event_type = 'Configured' AND e.schema_version = 2 THEN e.payload->'fields'
        WHEN e.event_type = 'Configured' AND e.schema_version = 1
            THEN jsonb_build_object(e.payload->>'key', e.payload->'value')
        ELSE '{}'::jsonb END) AS f(key, value) ON true
WHERE e.stream_id LIKE 'deal-%'
GROUP BY e.stream_id) d
WHERE jsonb_typeof(d.configuration->'gasConsumption') = 'number'
  AND (d.configuration->>'gasConsumption')::numeric = $1";

/// Runs the scenario on a fresh database and writes its section to `args.out`.
pub async fn run(url: &str, args: Args) -> Result<(), BenchError> {
    check(args.repetitions > 0, "--repetitions must be at least 1")?;
    let section = with_fresh_database(url, 8, |pool| measure(pool, &args)).await?;
    write_section(&args.out, &section)
}

async fn measure(pool: PgPool, args: &Args) -> Result<String, BenchError> {
    let (deals, events) = if args.full {
        (80_000, 2_000_000)
    } else {
        (args.deals, args.events)
    };
    generate(&pool, deals, events).await?;
    let worker = Worker::new(pool.clone(), es_examples::upcasters()).projection(DealsProjector)?;
    let rebuilt = rebuild(&worker, "deals", &RebuildOptions::default(), |_| {}).await?;
    check(
        rebuilt.applied == events,
        "the rebuild applied another number of events",
    )?;
    sqlx::raw_sql("ANALYZE deals_g1").execute(&pool).await?;
    let store = PgEventStore::new(pool.clone()).without_notify();
    let repository = Arc::new(
        es_core::Repository::<Deal>::new(store)
            .with_upcasters(Arc::new(es_examples::deal::upcasters())),
    );

    let mut table = Samples::default();
    let mut folding = Samples::default();
    let mut sql = Samples::default();
    let mut answer: Option<u64> = None;
    let mut agree = |n: u64, how: &str| -> Result<(), BenchError> {
        match answer {
            None => answer = Some(n),
            Some(a) => check(a == n, &format!("{how} found {n} deals, another way {a}"))?,
        }
        Ok(())
    };
    let rounds = 1 + args.repetitions;
    for round in 0..rounds {
        for k in 0..3 {
            match (k + round) % 3 {
                0 => {
                    for _ in 0..10 {
                        let t = Instant::now();
                        let ids: Vec<String> = sqlx::query_scalar(READ_TABLE)
                            .bind(args.gas)
                            .fetch_all(&pool)
                            .await?;
                        let elapsed = t.elapsed();
                        agree(ids.len() as u64, "the read table")?;
                        if round > 0 {
                            table.push(elapsed);
                        }
                    }
                }
                1 => {
                    let t = Instant::now();
                    let n =
                        count_by_folding(&repository, &pool, args.gas, args.concurrency).await?;
                    let elapsed = t.elapsed();
                    agree(n, "folding through the repository")?;
                    if round > 0 {
                        folding.push(elapsed);
                    }
                }
                _ => {
                    let t = Instant::now();
                    let n: i64 = sqlx::query_scalar(SQL_FOLD_QUERY)
                        .bind(args.gas)
                        .fetch_one(&pool)
                        .await?;
                    let elapsed = t.elapsed();
                    agree(n as u64, "the SQL fold")?;
                    if round > 0 {
                        sql.push(elapsed);
                    }
                }
            }
        }
        eprintln!("round {}/{rounds}", round + 1);
    }
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {}",
        READ_TABLE.replace("$1", &args.gas.to_string())
    ))
    .fetch_all(&pool)
    .await?;
    let matches = answer.unwrap_or(0);
    let mut out = Table::new(&[
        "way",
        ">median",
        ">p10 – p90",
        ">repetitions",
        ">/ read table",
    ]);
    let range = |s: &Samples| format!("{} – {}", ms(s.quantile(0.1)), ms(s.quantile(0.9)));
    for (name, s) in [
        (
            "read table (`deals.gas_consumption`, indexed)".to_string(),
            &table,
        ),
        (
            format!(
                "fold on read: repository load of every deal, {} in flight",
                args.concurrency
            ),
            &folding,
        ),
        ("fold on read: pure SQL".to_string(), &sql),
    ] {
        out.row(vec![
            name,
            ms(s.median()),
            range(s),
            count(s.len() as u64),
            times(ratio(s.median(), table.median())),
        ]);
    }
    Ok(format!(
        "## Query: deals with gasConsumption = {gas} (`es-bench query`)\n\
         \n\
         The motivating query on the example's generated log ({deals} deals, {events} events, \
         skewed, legacy v1 rows among them), answered three ways, round-robin, each required to \
         find the same {matches} deals: the **read table** maintained by `DealsProjector` \
         (`{READ_TABLE}`, filled by a rebuild beforehand), **folding on read through the \
         repository** (`es_examples::deal::count_by_folding`: every deal loaded, upcast and \
         folded, then filtered), and **folding on read in SQL** (the `catchup` scenario's \
         `jsonb_object_agg` fold, filtered). Medians; the read table ran ten times per round.\n\
         \n\
         {out}\n\
         The read table's plan:\n\
         \n\
         ```\n{plan}\n```\n\
         \n\
         The motivating case measured 7.9 s for the fold and 0.2 s for the read model at 80,000 \
         deals / 2,000,000 events; `es-bench query --full` runs this scenario at that scale.\n",
        gas = args.gas,
        deals = count(deals),
        events = count(events),
        out = out.to_markdown(),
        plan = plan.join("\n"),
    ))
}
