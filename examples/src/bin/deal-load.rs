//! The deal workload generator: `deal-load --deals 80000 --events 2000000` reproduces the real
//! case. Deterministic, skewed, resumable: run it again and it continues (or does nothing).

use clap::Parser;
use es_examples::deal::{load, LoadOptions};

/// Writes deals and their events through the framework.
#[derive(Parser, Debug)]
#[command(name = "deal-load")]
struct Args {
    /// The database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// How many deals.
    #[arg(long, default_value_t = 2000)]
    deals: u64,
    /// How many events in total (at least two per deal).
    #[arg(long, default_value_t = 50_000)]
    events: u64,
    /// Concurrent writer tasks.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Events per append.
    #[arg(long, default_value_t = 500)]
    append_batch: usize,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            es_projections::cli::report_error("deal-load", error.as_ref());
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let connections = u32::try_from(args.concurrency)
        .unwrap_or(u32::MAX)
        .saturating_add(2);
    let pool = es_postgres::connect(
        &args.database_url,
        connections,
        std::time::Duration::from_secs(5),
    )
    .await?;
    es_postgres::migrate(&pool).await?;
    let options = LoadOptions {
        deals: args.deals,
        events: args.events,
        concurrency: args.concurrency,
        append_batch: args.append_batch,
    };
    let started = std::time::Instant::now();
    let bar = es_projections::cli::progress_bar(
        options.events.max(options.deals * 2),
        "loading deals",
        "events",
    );
    let report = load(&pool, &options, |n| bar.inc(n)).await?;
    bar.finish_and_clear();
    println!(
        "{} deals, {} events planned: {} already there, {} appended, {} legacy v1 rows, in {:.1} s",
        options.deals,
        report.planned,
        report.already_there,
        report.appended,
        report.legacy,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
