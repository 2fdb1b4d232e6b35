//! `es-bench`: measures the framework against raw PostgreSQL reading the same rows, in the same
//! run, on a fresh database it creates (and drops) on the server named by `DATABASE_URL`.
//!
//! One subcommand per scenario, each in its own module under [`scenarios`]; each writes one
//! markdown section (a table of medians and ratios) to the file given by `--out`.
//! `scripts/bench` starts a private PostgreSQL, runs the scenarios and assembles
//! `docs/benchmarks.md` from their sections.
//!
//! Adding a scenario: a module under `scenarios/` with an `Args` (clap) and `async fn run`, a
//! variant of [`Scenario`], and a line in `scripts/bench`.
//!
//! Shared parts: [`fresh_db`] (a throw-away database), [`stats`] (timing samples, medians),
//! [`report`] (markdown tables).

mod common;
mod fresh_db;
mod report;
mod scenarios;
mod stats;
mod svg;

use clap::{Parser, Subcommand};

/// The error every scenario returns: anything, with its message.
pub type BenchError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Benchmarks of the es framework against raw PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "es-bench", version, about)]
struct Cli {
    /// The PostgreSQL server to use; a fresh database is created on it and dropped after.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    #[command(subcommand)]
    scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
enum Scenario {
    /// Aggregate load time against stream length, with and without snapshots, against raw SQL.
    Load(scenarios::load::Args),
    /// Append throughput by batch size and writers, against raw multi-row INSERTs.
    Append(scenarios::append::Args),
    /// The command path (load, handle, append) against raw read + INSERT and raw INSERT.
    Command(scenarios::command::Args),
    /// Rebuilding the Deal read table against a pure-SQL fold, and the rebuild's peak memory.
    Catchup(scenarios::catchup::Args),
    /// Live lag from append commit to read row, at steady write rates.
    Lag(scenarios::lag::Args),
    /// A filtered query from the read table against folding the events on every read.
    Query(scenarios::query::Args),
    /// Internal: one rebuild in a child process, reporting its time and peak memory.
    #[command(hide = true)]
    RebuildChild(scenarios::catchup::ChildArgs),
}

#[tokio::main]
async fn main() -> Result<(), BenchError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let url = cli
        .database_url
        .ok_or("DATABASE_URL (or --database-url) must name a PostgreSQL server")?;
    match cli.scenario {
        Scenario::Load(args) => scenarios::load::run(&url, args).await,
        Scenario::Append(args) => scenarios::append::run(&url, args).await,
        Scenario::Command(args) => scenarios::command::run(&url, args).await,
        Scenario::Catchup(args) => scenarios::catchup::run(&url, args).await,
        Scenario::Lag(args) => scenarios::lag::run(&url, args).await,
        Scenario::Query(args) => scenarios::query::run(&url, args).await,
        Scenario::RebuildChild(args) => scenarios::catchup::child(&url, args).await,
    }
}
