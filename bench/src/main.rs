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
//! [`report`] (markdown tables), [`noise`] (how busy the machine was with other work: measured
//! here around every scenario and written under each section's heading by
//! [`common::write_section`]; every target verdict says when it was noisy), [`svg`] (charts).

mod common;
mod fresh_db;
mod noise;
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
    /// The Deal workload at 20M events: append, status, verify, rebuild memory and holes at
    /// that size (`scripts/bench --scale`).
    Scale(scenarios::scale::Args),
    /// Internal: runs another benchmark command, then adds to the section it wrote how busy the
    /// machine was meanwhile (as every scenario of this binary does for itself).
    #[command(hide = true)]
    Wrap(WrapArgs),
    /// Internal: one rebuild in a child process, reporting its time and peak memory.
    #[command(hide = true)]
    RebuildChild(scenarios::catchup::ChildArgs),
}

/// Options of the hidden `wrap` subcommand.
#[derive(Debug, clap::Args)]
struct WrapArgs {
    /// The markdown section the command writes.
    #[arg(long)]
    section: std::path::PathBuf,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true)]
    command: Vec<String>,
}

/// The postmaster of the server at `url`, if it runs on this machine (see [`noise`]).
async fn find_postmaster(url: &str) -> Option<i32> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.ok()?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    let postmaster = noise::postmaster_of(pid);
    conn.close().await.ok();
    if postmaster.is_none() {
        eprintln!("the server's processes are not on this machine: its CPU counts as other");
    }
    postmaster
}

async fn wrap(args: WrapArgs) -> Result<(), BenchError> {
    let (program, rest) = args.command.split_first().ok_or("no command to run")?;
    let mut command = std::process::Command::new(program);
    command.args(rest);
    let status = tokio::task::spawn_blocking(move || command.status()).await??;
    common::check(status.success(), &format!("{program} failed: {status}"))?;
    let section = std::fs::read_to_string(&args.section)?;
    std::fs::write(
        &args.section,
        common::with_noise_line(&section, noise::scenario()),
    )?;
    Ok(())
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
    if !matches!(cli.scenario, Scenario::RebuildChild(_)) {
        noise::start_scenario(find_postmaster(&url).await);
    }
    match cli.scenario {
        Scenario::Load(args) => scenarios::load::run(&url, args).await,
        Scenario::Append(args) => scenarios::append::run(&url, args).await,
        Scenario::Command(args) => scenarios::command::run(&url, args).await,
        Scenario::Catchup(args) => scenarios::catchup::run(&url, args).await,
        Scenario::Lag(args) => scenarios::lag::run(&url, args).await,
        Scenario::Query(args) => scenarios::query::run(&url, args).await,
        Scenario::Scale(args) => scenarios::scale::run(&url, args).await,
        Scenario::Wrap(args) => wrap(args).await,
        Scenario::RebuildChild(args) => scenarios::catchup::child(&url, args).await,
    }
}
