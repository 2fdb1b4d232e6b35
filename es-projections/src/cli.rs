//! The command line of worker binaries: `run`, `status`, `verify`, `rebuild`; blue/green:
//! `compare`, `switch`, `rollback`, `drop-retired`; the dead letters: `dead-letters`, `retry`,
//! `skip`; and the schema's administration: `migrate`, `grant`.
//!
//! Only `migrate` changes the framework's schema; every other subcommand first checks, reading
//! only, that the database has the migrations this binary embeds, and stops naming the missing
//! versions when it does not. So `run` needs no privilege beyond a projector role's (its
//! projectors' `setup` creates their own tables), and `status` and `verify` run under a role
//! that may only SELECT (`verify` then cannot record its result and says so).
//!
//! This module is the binaries' front end, so unlike the rest of the library it prints for
//! humans (the status table, a progress bar, the rebuild summary, errors); logs still go through
//! `tracing` to stderr.
//!
//! A worker binary is a `main` that registers its projections and hands over to [`main`]:
//!
//! ```no_run
//! use es_core::Upcasters;
//! use es_projections::Worker;
//! # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)] enum DealEvent { Closed }
//! # impl es_core::DomainEvent for DealEvent { const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Closed", 1)]; }
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     es_projections::cli::main("deal-worker", |pool| {
//!         // Register the projectors here: `.projection(DealsProjector)?`.
//!         Ok(Worker::new(pool, Upcasters::of::<DealEvent>()))
//!     })
//!     .await
//! }
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use es_core::{GlobalPosition, StreamId};

use crate::dead_letters::{self, Action, DeadLetter, LetterState, Target};
use crate::engine::ErrorPolicy;
use crate::error::ProjectionError;
use crate::generations::{abandon_shadow, compare, drop_retired, rollback, switch, Switched};
use crate::observe::{self, ObserveConfig, Observer};
use crate::rebuild::{rebuild_until, RebuildOptions};
use crate::status::{count_to_apply, status};
use crate::verify::verify;
use crate::worker::Worker;

#[derive(Parser, Debug)]
struct Cli {
    /// The PostgreSQL database holding the events and the read tables.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the framework's migrations (as the owner of the schema; other subcommands never
    /// change it and stop when it is behind this binary).
    Migrate,
    /// Grant a role what one kind of process needs (idempotent; the role must exist; run as the
    /// owner of the schema, after `migrate`).
    Grant {
        /// What the role is for.
        #[arg(value_enum)]
        kind: GrantKind,
        /// The existing PostgreSQL role.
        role: String,
        /// For a reader: the role the projection workers run as, whose views it reads
        /// (repeatable).
        #[arg(long = "projector", value_name = "ROLE")]
        projectors: Vec<String>,
    },
    /// Run projections until SIGINT or SIGTERM (standing by while another process holds a lease).
    Run {
        /// Run only these projections (repeatable); all by default.
        #[arg(long = "projection", value_name = "NAME")]
        projections: Vec<String>,
        /// Events per transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// Events per transaction while a projection is behind (its last batch came back
        /// full), e.g. after downtime; 0 or anything up to --batch-size: never more than that.
        #[arg(long, default_value_t = 5000)]
        catch_up_batch_size: usize,
        /// Poll interval in milliseconds when no notification arrives (at least 1).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
        poll_ms: u64,
        /// Lease length in milliseconds: a standby takes over this long after the holder dies
        /// (at least 100: the holder renews it every third).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
        lease_ms: u64,
        /// Park events that cannot be decoded or applied in es_dead_letters instead of stopping.
        #[arg(long)]
        dead_letter: bool,
        /// Serve /metrics (Prometheus), /health/live, /health/ready and a status page on this
        /// address, e.g. 0.0.0.0:9464.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
        /// /health/ready answers 503 when a projection is behind and its checkpoint has not
        /// moved for this many seconds (at least 1).
        #[arg(long, default_value_t = 60, requires = "metrics_addr",
              value_parser = clap::value_parser!(u64).range(1..))]
        stall_secs: u64,
        /// LISTEN for new events through this server (a direct or session-pooled URL) instead of
        /// DATABASE_URL's: needed when DATABASE_URL goes through a pooler in transaction mode,
        /// where a LISTEN misdelivers notifications to other clients.
        #[arg(
            long,
            env = "ES_LISTEN_URL",
            hide_env_values = true,
            value_name = "URL"
        )]
        listen_url: Option<String>,
        /// Do not LISTEN at all, only poll every --poll-ms: behind a pooler in transaction mode
        /// when no direct connection is allowed.
        #[arg(long, conflicts_with = "listen_url")]
        no_listen: bool,
    },
    /// Show each projection's checkpoint, lag, lease, errors and last verification, and what
    /// holds the horizon.
    Status,
    /// Prove that projections were delivered every committed event up to their checkpoint, naming
    /// the first one they were not; exits 1 if any was skipped.
    Verify {
        /// The projections to verify (all by default).
        names: Vec<String>,
    },
    /// Reset a projection and replay the whole log (resumes an interrupted rebuild); or, with
    /// --shadow, build the next generation beside the live one (blue/green).
    Rebuild {
        /// The projection.
        name: String,
        /// Build the next generation beside the live one and stop short of the switch: workers
        /// keep it caught up until `compare`, `switch` or `rebuild --abandon`.
        #[arg(long)]
        shadow: bool,
        /// With --shadow: switch to the new generation as soon as it has caught up.
        #[arg(long, requires = "shadow")]
        switch: bool,
        /// Start over instead of resuming an interrupted rebuild.
        #[arg(long)]
        restart: bool,
        /// Park events that cannot be decoded or applied in es_dead_letters instead of stopping.
        #[arg(long)]
        dead_letter: bool,
        /// Drop an unfinished shadow generation (its tables and checkpoint) instead of building.
        #[arg(long, conflicts_with_all = ["restart", "dead_letter", "switch"])]
        abandon: bool,
        /// Events per transaction.
        #[arg(long, default_value_t = 5000)]
        batch_size: usize,
    },
    /// Compare the live generation with the shadow (or the retired one): row counts, checksums
    /// and a sample of differing rows; exits 1 when they differ.
    Compare {
        /// The projection.
        name: String,
        /// How many differing rows to show each way, per table.
        #[arg(long, default_value_t = 5)]
        sample: usize,
    },
    /// Make the shadow generation live, atomically; the live one is retired and kept (caught up)
    /// for `rollback` until `drop-retired`.
    Switch {
        /// The projection.
        name: String,
    },
    /// Make the retired generation live again, atomically; the live one becomes the shadow, so
    /// that `switch` goes forward again.
    Rollback {
        /// The projection.
        name: String,
    },
    /// Drop the retired generation (its tables and checkpoint): no rollback after this.
    DropRetired {
        /// The projection.
        name: String,
    },
    /// List dead letters: the open ones of every projection and consumer, or of NAME.
    DeadLetters {
        /// Only this projection or consumer.
        name: Option<String>,
        /// Retried and skipped letters too.
        #[arg(long)]
        all: bool,
    },
    /// Deliver dead letters again, in stream order (after fixing their cause). The process
    /// holding the lease carries it out; when none does, this command does.
    Retry {
        /// The projection or consumer.
        name: String,
        /// The letter at this position, and the open letters before it in its stream.
        #[arg(long, group = "target")]
        position: Option<i64>,
        /// Every open letter of this stream.
        #[arg(long, group = "target")]
        stream: Option<String>,
        /// Every open letter.
        #[arg(long, group = "target")]
        all: bool,
        /// How long to wait for the lease holder to carry it out, in seconds.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
    /// Give up on one dead letter, with a reason (kept with it); the events held behind it in
    /// its stream are then delivered, unless another failed letter of the stream stays before
    /// them.
    Skip {
        /// The projection or consumer.
        name: String,
        /// The letter's position.
        #[arg(long)]
        position: i64,
        /// Why it is skipped.
        #[arg(long)]
        reason: String,
        /// How long to wait for the lease holder to carry it out, in seconds.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
}

/// The kinds of role `grant` knows (`es_postgres::Role`).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum GrantKind {
    /// Appends and reads events (the application).
    Writer,
    /// Runs projections: reads events, writes checkpoints and its own tables.
    Projector,
    /// Reads the views of the projector roles given with --projector.
    Reader,
    /// Runs `status` and `verify`: reads, and records verifications.
    Monitor,
}

/// Parses the command line, connects, checks the schema (or migrates, for `migrate`), and runs the command with the worker `build`
/// makes. Logs go to stderr (`RUST_LOG` filters, default `info`).
pub async fn main(
    binary: &str,
    build: impl FnOnce(PgPool) -> Result<Worker, ProjectionError>,
) -> ExitCode {
    main_from(binary, std::env::args_os(), build).await
}

/// [`main`] with the arguments given (the first is the program name), e.g. to drive the CLI
/// from a test. Exits the process only where clap does (`--help`, a usage error).
pub async fn main_from<I, T>(
    binary: &str,
    args: I,
    build: impl FnOnce(PgPool) -> Result<Worker, ProjectionError>,
) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let cli = Cli::parse_from(args);
    use tracing_subscriber::Layer as _;
    // RUST_LOG filters what is printed only: traces are filtered on their own (observe::otel),
    // so that quieter logs do not silence the export.
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,sqlx=warn".into()),
            ),
    );
    // With the `otel` feature and OTEL_EXPORTER_OTLP_ENDPOINT set, spans are exported too.
    #[cfg(feature = "otel")]
    let (subscriber, provider) = match observe::otel::layer(binary) {
        Ok(Some((layer, provider))) => (subscriber.with(Some(layer)), Some(provider)),
        Ok(None) => (subscriber.with(None), None),
        Err(error) => {
            report_error(binary, &error);
            eprintln!(
                "{binary}: traces are not exported; check {}",
                observe::otel::ENDPOINT
            );
            (subscriber.with(None), None)
        }
    };
    // A second call in one process (tests) keeps the first subscriber.
    let _ = subscriber.try_init();
    let code = match execute(binary, cli, build).await {
        Ok(code) => code,
        Err(error) => {
            report_error(binary, error.as_ref());
            ExitCode::FAILURE
        }
    };
    #[cfg(feature = "otel")]
    if let Some(provider) = provider {
        // Sends the spans still buffered; blocks on the exporter's thread, so not on ours.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    code
}

async fn execute(
    binary: &str,
    cli: Cli,
    build: impl FnOnce(PgPool) -> Result<Worker, ProjectionError>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let pool = es_postgres::connect(&cli.database_url, 16, Duration::from_secs(5)).await?;
    if administer(&pool, &cli.command).await? {
        return Ok(ExitCode::SUCCESS);
    }
    check_schema(binary, &pool).await?;
    let worker = build(pool.clone())?;
    match cli.command {
        // Carried out by `administer`.
        Command::Migrate | Command::Grant { .. } => {}
        Command::Run {
            projections,
            batch_size,
            catch_up_batch_size,
            poll_ms,
            lease_ms,
            dead_letter,
            metrics_addr,
            stall_secs,
            listen_url,
            no_listen,
        } => {
            let mut config = worker.config().clone();
            config.batch_size = batch_size;
            config.catch_up_batch_size = catch_up_batch_size;
            config.poll_interval = Duration::from_millis(poll_ms);
            config.lease_ttl = Duration::from_millis(lease_ms);
            config.error_policy = if dead_letter {
                ErrorPolicy::DeadLetter
            } else {
                ErrorPolicy::Stop
            };
            let mut worker = worker.with_config(config);
            if let Some(url) = listen_url {
                // One connection: the listener's own (sqlx opens it from the pool's options).
                let listen_pool = es_postgres::connect(&url, 1, Duration::from_secs(5)).await?;
                worker = worker.listen_on(listen_pool);
            }
            if no_listen {
                worker = worker.without_listen();
            }
            let mut serving = None;
            if let Some(addr) = metrics_addr {
                let observer =
                    Observer::new(ObserveConfig::with_stall(Duration::from_secs(stall_secs)))?;
                worker = worker.with_observer(&observer);
                let served =
                    observe::serve(addr.as_str(), &observer, &worker, &projections).await?;
                eprintln!(
                    "metrics on http://{0}/metrics, health on /health/ready, status page on http://{0}/",
                    served.local_addr()
                );
                serving = Some(served);
            }
            let ran = worker.run_only(&projections, shutdown_signal()).await;
            if let Some(serving) = serving {
                serving.stop().await;
            }
            ran?;
        }
        Command::Status => {
            let mut status = status(&pool).await?;
            count_to_apply(&worker, &mut status).await?;
            print!("{status}");
        }
        Command::Verify { names } => {
            let every = names.is_empty();
            let names: Vec<String> = if every {
                worker.names().into_iter().map(String::from).collect()
            } else {
                names
            };
            let mut all_ok = true;
            for name in &names {
                let report = match verify(&worker, name).await {
                    // Verifying everything: one that never ran has nothing to verify yet.
                    Err(ProjectionError::NoCheckpoint(_)) if every => {
                        println!("{name}: not run yet, nothing to verify");
                        continue;
                    }
                    result => result?,
                };
                all_ok &= report.ok();
                println!("{report}");
                if !report.recorded {
                    println!("  (not recorded for `status`: this role may not update es_projections; `grant monitor ROLE` allows it)");
                }
                for event in report.missing.iter().skip(1) {
                    println!("  also never delivered: {event}");
                }
                if report.missing_ignored > 0 {
                    println!(
                        "  ({} missing events on streams {name} does not read are ignored)",
                        report.missing_ignored
                    );
                }
                if report.checked_from.0 > 0 {
                    println!(
                        "  (positions up to {} were applied before the ledger existed: rebuild {name} to verify them)",
                        report.checked_from
                    );
                }
            }
            if !all_ok {
                println!("verification failed: rebuild the projection (`rebuild NAME --shadow --switch`) to repair it");
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Compare { name, sample } => {
            let comparison = compare(&worker, &name, sample).await?;
            print!("{comparison}");
            if !comparison.same() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Switch { name } => {
            let switched = switch(&worker, &name).await?;
            print_switched("switched", &switched);
            println!(
                "generation {} is retired and kept for `rollback {name}`; `drop-retired {name}` drops it",
                switched.from
            );
        }
        Command::Rollback { name } => {
            let switched = rollback(&worker, &name).await?;
            print_switched("rolled back", &switched);
            println!(
                "generation {} is the shadow now: `switch {name}` goes forward again, `rebuild {name} --abandon` drops it",
                switched.from
            );
        }
        Command::DropRetired { name } => {
            let dropped = drop_retired(&worker, &name).await?;
            match dropped.as_slice() {
                [] => println!("{name} has no retired generation"),
                gens => println!(
                    "dropped the retired generation {} of {name}",
                    gens.iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        Command::DeadLetters { name, all } => {
            let letters = dead_letters::list(&pool, name.as_deref(), all).await?;
            print!("{}", letters_table(&letters));
        }
        Command::Retry {
            name,
            position,
            stream,
            all,
            wait_secs,
        } => {
            let target = match (position, stream) {
                (Some(p), _) => Target::Position(GlobalPosition(p)),
                (None, Some(s)) => Target::Stream(StreamId::new(s)?),
                (None, None) if all => Target::All,
                (None, None) => {
                    return Err("say which letters: --position P, --stream S or --all".into())
                }
            };
            return act(&worker, &name, Action::Retry, &target, None, wait_secs).await;
        }
        Command::Skip {
            name,
            position,
            reason,
            wait_secs,
        } => {
            let target = Target::Position(GlobalPosition(position));
            return act(
                &worker,
                &name,
                Action::Skip,
                &target,
                Some(&reason),
                wait_secs,
            )
            .await;
        }
        Command::Rebuild {
            abandon: true,
            name,
            ..
        } => match abandon_shadow(&worker, &name).await? {
            Some(generation) => println!("dropped the shadow generation {generation} of {name}"),
            None => println!("{name} has no shadow generation"),
        },
        Command::Rebuild {
            name,
            shadow,
            switch,
            restart,
            dead_letter,
            batch_size,
            abandon: false,
        } => {
            let bar = progress_bar(0, format!("rebuilding {name}"), "positions");
            let options = RebuildOptions {
                batch_size,
                shadow,
                switch,
                restart,
                error_policy: if dead_letter {
                    ErrorPolicy::DeadLetter
                } else {
                    ErrorPolicy::Stop
                },
            };
            let rebuilt = rebuild_until(
                &worker,
                &name,
                &options,
                |p| {
                    bar.set_length(p.head.max(0) as u64);
                    bar.set_position(p.position.max(0) as u64);
                },
                shutdown_signal(),
            )
            .await;
            bar.finish_and_clear();
            match rebuilt {
                // A name nobody registered: there is nothing to resume.
                Err(error @ ProjectionError::UnknownProjection(_)) => return Err(error.into()),
                Err(error) => {
                    eprintln!(
                        "the rebuild stopped (`status` shows the projection's state and any recorded error). Fix the cause and run the same command to resume{}.",
                        if shadow { ", or `rebuild NAME --abandon` to drop the shadow" } else { ", or add --dead-letter to park bad events" }
                    );
                    return Err(error.into());
                }
                Ok(report) if report.interrupted => {
                    println!(
                        "interrupted after {} events: run the same command again to resume",
                        report.applied
                    );
                }
                Ok(report) => {
                    println!(
                        "rebuilt {} (generation {}{}): {} events in {:.1} s ({:.0} events/s)",
                        report.projection,
                        report.generation,
                        if report.resumed { ", resumed" } else { "" },
                        report.applied,
                        report.elapsed.as_secs_f64(),
                        report.applied as f64 / report.elapsed.as_secs_f64().max(1e-9),
                    );
                    if !report.live {
                        println!(
                            "generation {} is the shadow: workers keep it caught up; `compare {name}` shows how it differs, `switch {name}` makes it live",
                            report.generation
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_switched(what: &str, s: &Switched) {
    println!(
        "{what} {}: generation {} is live (was {}; {} events applied under the switch's lock)",
        s.projection, s.to, s.from, s.applied
    );
}

/// A progress bar for long work, as the binaries draw it: `msg [=====>   ] 1200/5000 positions,
/// 8412/s, ETA 0s`; the rate in whole units per second.
pub fn progress_bar(
    length: u64,
    message: impl Into<std::borrow::Cow<'static, str>>,
    unit: &str,
) -> ProgressBar {
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:40}}] {{pos}}/{{len}} {unit}, {{rate}}, ETA {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// Carries out `migrate` and `grant`, the subcommands that change the schema or its
/// privileges; false for the others.
async fn administer(pool: &PgPool, command: &Command) -> Result<bool, Box<dyn std::error::Error>> {
    match command {
        Command::Migrate => {
            es_postgres::migrate(pool).await?;
            let latest = es_postgres::MIGRATOR.iter().map(|m| m.version).max();
            println!(
                "the framework's schema is up to date (migrations up to {})",
                latest.unwrap_or(0)
            );
        }
        Command::Grant {
            kind,
            role,
            projectors,
        } => {
            let granted = match kind {
                GrantKind::Writer => es_postgres::Role::Writer,
                GrantKind::Projector => es_postgres::Role::Projector,
                GrantKind::Monitor => es_postgres::Role::Monitor,
                GrantKind::Reader => es_postgres::Role::Reader {
                    projectors: projectors.clone(),
                },
            };
            if !projectors.is_empty() && !matches!(kind, GrantKind::Reader) {
                return Err("--projector is for `grant reader` only".into());
            }
            es_postgres::grant(pool, &granted, role).await?;
            println!("granted {granted} privileges to {role}");
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// The read-only schema check every other subcommand starts with, its error saying what to run.
async fn check_schema(binary: &str, pool: &PgPool) -> Result<(), Box<dyn std::error::Error>> {
    match es_postgres::check_schema(pool).await {
        Ok(()) => Ok(()),
        Err(error @ es_postgres::SchemaError::Behind { .. }) => Err(format!(
            "{error}: run `{binary} migrate` as the schema's owner, then start again"
        )
        .into()),
        Err(error @ es_postgres::SchemaError::Unreadable(_)) => Err(format!(
            "{error}: the role needs SELECT on it (`{binary} grant` gives each kind of role what it needs)"
        )
        .into()),
        Err(error) => Err(error.into()),
    }
}

/// Prints `error` for a person on stderr: `binary: error`, then each cause on a line of its own;
/// never a `Debug` dump, with invisible and control characters escaped
/// ([`es_core::escape_for_display`]). For binaries' own errors outside [`main`] too.
pub fn report_error(binary: &str, error: &(dyn std::error::Error + 'static)) {
    for line in error_lines(binary, error) {
        eprintln!("{line}");
    }
}

/// The lines [`report_error`] prints.
fn error_lines(binary: &str, error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    // Messages quote stream ids and values read from storage: escaped, so that a bidirectional
    // override or a newline in one cannot disguise the line (as in the tables).
    let shown =
        |e: &dyn std::error::Error| es_core::escape_for_display(&e.to_string()).into_owned();
    let mut lines = vec![format!("{binary}: {}", shown(error))];
    let mut source = error.source();
    while let Some(cause) = source {
        lines.push(format!("  caused by: {}", shown(cause)));
        source = cause.source();
    }
    lines
}

/// Who asks, as recorded with a request.
fn operator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    format!("{user} (cli)")
}

/// Requests `action` on `name`'s letters, has it carried out (here when no process holds the
/// lease), waits for it, and prints what became of each letter. Fails when one failed again.
async fn act(
    worker: &Worker,
    name: &str,
    action: Action,
    target: &Target,
    reason: Option<&str>,
    wait_secs: u64,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let pool = worker.pool();
    if !worker.names().contains(&name) {
        return Err(ProjectionError::UnknownProjection(name.to_string()).into());
    }
    let ids = dead_letters::request(pool, name, action, target, &operator(), reason).await?;
    if ids.is_empty() {
        println!("{name} has no open dead letter there: nothing to do (`dead-letters {name}` lists them)");
        return Ok(ExitCode::FAILURE);
    }
    match worker.carry_out(name).await? {
        Some(_) => {}
        None => println!("the process holding {name}'s lease carries it out; waiting"),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(wait_secs);
    let letters = loop {
        let letters = dead_letters::by_id(pool, &ids).await?;
        let pending = letters.iter().any(|l| l.requested.is_some());
        if !pending {
            break letters;
        }
        if std::time::Instant::now() >= deadline {
            print!("{}", letters_table(&letters));
            return Err(format!(
                "the lease holder of {name} did not carry the request out within {wait_secs} s; it stays requested (`status` shows who holds the lease)"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    print!("{}", letters_table(&letters));
    if letters.len() < ids.len() {
        println!(
            "{} letter(s) are gone: a rebuild reset the generation they belonged to",
            ids.len() - letters.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    let open = letters
        .iter()
        .filter(|l| l.state == LetterState::Open)
        .count();
    if open > 0 {
        println!("{open} letter(s) still open: they failed again (see the error) or wait behind one that did");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Dead letters as a table, errors on one line each.
fn letters_table(letters: &[DeadLetter]) -> String {
    if letters.is_empty() {
        return "no dead letters\n".into();
    }
    let header = [
        "NAME", "POSITION", "STREAM", "VERSION", "TYPE", "CAUSE", "TRIES", "STATE", "PARKED",
        "REQUEST", "ERROR",
    ];
    let rows: Vec<[String; 11]> = letters
        .iter()
        .map(|l| {
            let error: String = l.error.split_whitespace().collect::<Vec<_>>().join(" ");
            let error = if error.chars().count() > 100 {
                format!("{}...", error.chars().take(100).collect::<String>())
            } else {
                error
            };
            [
                l.name.clone(),
                l.event.position.to_string(),
                l.event.stream.to_string(),
                l.event.stream_version.to_string(),
                format!("{} v{}", l.event.event_type, l.event.schema_version),
                format!("{:?}", l.cause).to_lowercase(),
                l.attempts.to_string(),
                match (l.state, &l.resolved) {
                    (LetterState::Open, _) => "open".into(),
                    (state, Some((at, _))) => {
                        format!(
                            "{} {}",
                            format!("{state:?}").to_lowercase(),
                            at.format("%F %T")
                        )
                    }
                    (state, None) => format!("{state:?}").to_lowercase(),
                },
                l.parked_at.format("%F %T").to_string(),
                match &l.requested {
                    Some((action, _)) => format!("{action:?}").to_lowercase(),
                    None => "-".into(),
                },
                match (&l.reason, l.state) {
                    (Some(reason), LetterState::Skipped) => {
                        format!("skipped: {reason} (was: {error})")
                    }
                    _ => error,
                },
            ]
        })
        .collect();
    crate::table::render(header, &rows)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_escape_what_could_disguise_them() {
        let error = ProjectionError::UnknownProjection("deal-\u{202e}1-tnuocca\nfake line".into());
        let lines = error_lines("deal-worker", &error);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("deal-\\u{202e}1-tnuocca\\nfake line"),
            "{lines:?}"
        );
        assert!(!lines[0].contains('\u{202e}'));
    }
}
