//! The end-to-end demo. First, briefly, a bank account under concurrent withdrawals (conflicts
//! and retries), a transfer committed across two accounts in one transaction, and the same
//! transfer repeated with its idempotency key (nothing written twice). Then the CRM deal case:
//! load a skewed workload through the framework (legacy v1 rows included), create a deal whose
//! CRM-id row and first event share one transaction, project it into the indexed `deals` table with a worker, compare a filtered
//! query on the table with folding every deal on the fly, rebuild the projection as a shadow and
//! check the table is identical, verify that the projection was given every committed event,
//! and show the status. Between the two, a wire transfer run by a process manager (debit,
//! credit, and a refund when the credit is refused), with its causation chain read back from the
//! log. At the end, when `NATS_URL` names a NATS server with JetStream (`scripts/demo` starts
//! one), every event of the log is published to it and counted back by message id. Run it with
//! `scripts/demo [--deals N] [--events N]`; the real case is
//! `scripts/demo --deals 80000 --events 2000000`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use es_core::{
    CommandOptions, EventStore, ExpectedVersion, IdempotencyKey, Repository, RepositoryError,
    RetryPolicy, StreamId,
};
use es_examples::bank::{
    transfer, Account, AccountCommand, AccountError, BalancesProjector, OwnersProjector,
};
use es_examples::deal::{
    count_by_folding, create_deal, load, wait_caught_up, Deal, DealsProjector, LoadOptions,
};
use es_examples::upcasters;
use es_examples::wire::{Wire, WireCommand, WireProcess, WireState};
use es_postgres::PgEventStore;
use es_projections::nats::{JetStreamOptions, JetStreamSink};
use es_projections::publisher::Publisher;
use es_projections::{RebuildOptions, Worker, WorkerConfig};
use indicatif::ProgressBar;
use sqlx::PgPool;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The framework end to end.
#[derive(Parser, Debug)]
#[command(name = "demo")]
struct Args {
    /// The database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// How many deals.
    #[arg(long, default_value_t = 2000)]
    deals: u64,
    /// How many events in total.
    #[arg(long, default_value_t = 50_000)]
    events: u64,
    /// Skip the bank account part.
    #[arg(long)]
    skip_bank: bool,
    /// A NATS server with JetStream to publish the log to (skipped when unset).
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            es_projections::cli::report_error("demo", error.as_ref());
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,sqlx::query=error".into()),
        )
        .init();
    let args = Args::parse();
    let pool = es_postgres::connect(&args.database_url, 20, Duration::from_secs(5)).await?;
    es_postgres::migrate(&pool).await?;
    if !args.skip_bank {
        bank(&pool).await?;
        wires(&pool).await?;
    }
    deals(&pool, args.deals, args.events).await?;
    match args.nats_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => publish(&pool, url).await?,
        None => println!(
            "\n(NATS_URL is not set: the log is not published; scripts/demo starts a NATS server)"
        ),
    }
    println!("\n== Status");
    print!("{}", es_projections::status(&pool).await?);
    if args.deals < 80_000 {
        println!(
            "\nThe real case has 80,000 deals and 2,000,000 events: \
             scripts/demo --deals 80000 --events 2000000"
        );
    }
    Ok(())
}

/// Conflicts and retries: 20 concurrent withdrawals from a balance that covers 10.
async fn bank(pool: &PgPool) -> Result<(), Error> {
    let store = PgEventStore::new(pool.clone());
    // One hot stream, 20 racing writers: allow more attempts than the default policy.
    let retry = RetryPolicy {
        max_attempts: 50,
        ..RetryPolicy::default()
    };
    let accounts = Arc::new(Repository::<Account>::new(store.clone()).with_retry(retry));
    println!("== Bank accounts: no overdraft under concurrent withdrawals");
    let id = StreamId::new(format!("account-{}", uuid::Uuid::new_v4().simple()))?;
    accounts
        .execute(
            &id,
            AccountCommand::Open {
                owner: "ann".into(),
            },
        )
        .await?;
    accounts
        .execute(&id, AccountCommand::Deposit { amount: 1_000 })
        .await?;
    println!("opened {id} with a balance of 1000");

    // 20 tasks race to withdraw 100 each from a balance of 1000: exactly 10 may succeed.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (accounts, id) = (accounts.clone(), id.clone());
            tokio::spawn(async move {
                accounts
                    .execute(&id, AccountCommand::Withdraw { amount: 100 })
                    .await
            })
        })
        .collect();
    let (mut accepted, mut refused, mut retries) = (0, 0, 0);
    for task in tasks {
        match task.await? {
            Ok(outcome) => {
                accepted += 1;
                retries += outcome.attempts - 1;
            }
            Err(RepositoryError::Domain(AccountError::InsufficientFunds { .. })) => refused += 1,
            Err(other) => return Err(other.into()),
        }
    }
    let loaded = accounts.load(&id).await?;
    println!(
        "20 concurrent withdrawals of 100: {accepted} accepted, {refused} refused for insufficient funds, \
         {retries} conflict retries; final balance {} at stream version {}",
        loaded.state.balance, loaded.version
    );
    assert_eq!(loaded.state.balance, 0, "no overdraft, no lost withdrawal");

    println!("\n== Optimistic concurrency at the store");
    let stale = store
        .append(
            &id,
            ExpectedVersion::Exact(es_core::StreamVersion(2)),
            vec![es_core::EventData::raw(
                "Deposited",
                1,
                serde_json::json!({"amount": 1}),
            )],
        )
        .await;
    match stale {
        Err(error) => println!("append with a stale expected version: {error}"),
        Ok(_) => return Err("a stale append must conflict".into()),
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events WHERE stream_id = $1")
        .bind(id.as_str())
        .fetch_one(pool)
        .await?;
    println!("{id} holds {count} events in es_events");

    println!("\n== A transfer: one decision over two accounts, one transaction");
    let savings = StreamId::new(format!("account-{}", uuid::Uuid::new_v4().simple()))?;
    accounts
        .execute(
            &savings,
            AccountCommand::Open {
                owner: "ann".into(),
            },
        )
        .await?;
    accounts
        .execute(&savings, AccountCommand::Deposit { amount: 500 })
        .await?;
    let key = IdempotencyKey::for_request(format!("transfer-{savings}-1"), &(&savings, &id, 300))?;
    let moved = transfer(
        &accounts,
        &savings,
        &id,
        300,
        CommandOptions::default().idempotency_key(key.clone()),
    )
    .await?;
    let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT stream_id, stream_version, event_type, transaction_id::text FROM es_events
         WHERE (stream_id, stream_version) IN (($1, $2), ($3, $4)) ORDER BY global_position",
    )
    .bind(moved.streams[0].stream.as_str())
    .bind(moved.streams[0].stream_version.0 as i64)
    .bind(moved.streams[1].stream.as_str())
    .bind(moved.streams[1].stream_version.0 as i64)
    .fetch_all(pool)
    .await?;
    for (stream, version, event_type, transaction) in &rows {
        println!("  {stream} v{version} {event_type:<9} written by transaction {transaction}");
    }
    if rows.len() != 2 || rows[0].3 != rows[1].3 {
        return Err("the transfer's two events must share one transaction".into());
    }
    let events_before: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events")
        .fetch_one(pool)
        .await?;
    let again = transfer(
        &accounts,
        &savings,
        &id,
        300,
        CommandOptions::default().idempotency_key(key),
    )
    .await?;
    let events_after: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events")
        .fetch_one(pool)
        .await?;
    println!(
        "the same transfer again, with the same idempotency key: replayed = {}, the first outcome \
         (versions {} and {}), {} events written",
        again.replayed,
        again.streams[0].stream_version,
        again.streams[1].stream_version,
        events_after - events_before
    );
    if !again.replayed || events_after != events_before || again.streams != moved.streams {
        return Err("a repeated command must write nothing and return the first outcome".into());
    }
    println!(
        "balances: {} {}, {} {}",
        savings,
        accounts.load(&savings).await?.state.balance,
        id,
        accounts.load(&id).await?.state.balance
    );

    println!("\n== Two projections of the same streams, reading different event types");
    let worker = Worker::new(pool.clone(), upcasters())
        .projection(BalancesProjector)?
        .projection(OwnersProjector)?;
    let head: i64 = sqlx::query_scalar("SELECT max(global_position) FROM es_events")
        .fetch_one(pool)
        .await?;
    let shutdown = async {
        for name in ["account_balances", "account_owners"] {
            let reached = es_projections::wait_for(
                pool,
                name,
                es_core::GlobalPosition(head),
                Duration::from_secs(60),
            )
            .await;
            if let Err(error) = reached {
                eprintln!("{error}");
            }
        }
    };
    worker.run(shutdown).await?;
    let (balance, version): (i64, i64) = sqlx::query_as(
        "SELECT balance, stream_version FROM account_balances WHERE account_id = $1",
    )
    .bind(id.as_str())
    .fetch_one(pool)
    .await?;
    let owner: String =
        sqlx::query_scalar("SELECT owner FROM account_owners WHERE account_id = $1")
            .bind(id.as_str())
            .fetch_one(pool)
            .await?;
    println!(
        "account_balances (every event type): balance {balance} at version {version}; \
         account_owners (only Opened): owner {owner}"
    );
    Ok(())
}

/// The CRM deal case end to end.
async fn deals(pool: &PgPool, deals: u64, events: u64) -> Result<(), Error> {
    println!("\n== Deals: {deals} deals, {events} events (skewed; some legacy v1 rows)");
    let options = LoadOptions {
        deals,
        events,
        ..LoadOptions::default()
    };
    let started = Instant::now();
    let bar = progress_bar(events, "loading   ", "events");
    let report = load(pool, &options, |n| bar.inc(n)).await?;
    bar.finish_and_clear();
    println!(
        "load: {} events planned, {} already there, {} appended through PgEventStore, {} legacy v1 rows by raw SQL, in {:.1} s",
        report.planned,
        report.already_there,
        report.appended,
        report.legacy,
        started.elapsed().as_secs_f64()
    );

    println!("\n== A new deal: its CRM-id row and its Created event in one transaction");
    let store = PgEventStore::new(pool.clone());
    let repository = Repository::<Deal>::new(store.clone()).with_upcasters(Arc::new(upcasters()));
    let deal = StreamId::new(format!("deal-demo-{}", uuid::Uuid::new_v4().simple()))?;
    let crm_id = format!("CRM-DEMO-{}", &deal.as_str()[10..18]);
    create_deal(&repository, &store, &deal, &crm_id).await?;
    let (row_xid, event_xid): (String, String) = sqlx::query_as(
        "SELECT c.xmin::text, (e.transaction_id::text::numeric % 4294967296)::text
         FROM deal_crm_ids c JOIN es_events e ON e.stream_id = c.deal_id
         WHERE c.deal_id = $1 AND e.stream_version = 1",
    )
    .bind(deal.as_str())
    .fetch_one(pool)
    .await?;
    println!(
        "{deal}: deal_crm_ids row ({crm_id}) written by transaction {row_xid}, \
         Created event by transaction {event_xid}"
    );
    if row_xid != event_xid {
        return Err("the CRM row and the Created event must share one transaction".into());
    }

    println!("\n== Projecting into the deals table (worker in process, until lag is 0)");
    // The bank account's events share the log: the registry names every type in it.
    let worker = Worker::new(pool.clone(), upcasters())
        .projection(DealsProjector)?
        .with_config(WorkerConfig {
            batch_size: 5000,
            poll_interval: Duration::from_millis(200),
            ..WorkerConfig::default()
        });
    let started = Instant::now();
    let bar = progress_bar(0, "projecting", "positions");
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let shutdown = async {
        let caught_up = wait_caught_up(pool, "deals", Duration::from_millis(250), |at, head| {
            bar.set_length(head.max(0) as u64);
            bar.set_position(at.max(0) as u64);
        })
        .await;
        if let Err(error) = caught_up {
            if let Ok(mut slot) = failure.lock() {
                *slot = Some(error.to_string());
            }
        }
    };
    worker.run(shutdown).await?;
    bar.finish_and_clear();
    if let Some(error) = failure.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(error.into());
    }
    println!(
        "caught up in {:.1} s (events already projected by an earlier run are not replayed)",
        started.elapsed().as_secs_f64()
    );

    println!("\n== The same filtered query two ways: gasConsumption = 123");
    let started = Instant::now();
    let from_table: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deals WHERE gas_consumption = 123")
            .fetch_one(pool)
            .await?;
    let table_time = started.elapsed();
    let repository = Repository::<Deal>::new(PgEventStore::new(pool.clone()))
        .with_upcasters(Arc::new(upcasters()));
    let started = Instant::now();
    let by_folding = count_by_folding(&repository, pool, 123, 8).await?;
    let fold_time = started.elapsed();
    println!(
        "read table (indexed):         {from_table} deals in {:>9.3} ms",
        table_time.as_secs_f64() * 1e3
    );
    println!(
        "folding every deal's events:  {by_folding} deals in {:>9.3} ms",
        fold_time.as_secs_f64() * 1e3
    );
    println!(
        "the read table is {:.0}x faster",
        fold_time.as_secs_f64() / table_time.as_secs_f64().max(1e-9)
    );
    if u64::try_from(from_table).ok() != Some(by_folding) {
        return Err(format!("the read table says {from_table}, the fold {by_folding}").into());
    }
    let sample: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT d.deal_id, c.crm_id, d.configuration FROM deals d
         JOIN deal_crm_ids c USING (deal_id) WHERE d.gas_consumption = 123
         ORDER BY d.stream_version DESC LIMIT 3",
    )
    .fetch_all(pool)
    .await?;
    for (deal, crm, configuration) in sample {
        println!("  {deal} ({crm}): {configuration}");
    }

    println!(
        "\n== Blue/green: deals rebuilt from scratch beside the live table, compared, switched"
    );
    let before = table_digest(pool).await?;
    let bar = progress_bar(0, "rebuilding", "positions");
    let options = RebuildOptions {
        batch_size: 10_000,
        shadow: true,
        restart: false,
        ..Default::default()
    };
    let rebuilt = es_projections::rebuild(&worker, "deals", &options, |p| {
        bar.set_length(p.head.max(0) as u64);
        bar.set_position(p.position.max(0) as u64);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "built the shadow generation {}: {} events in {:.1} s ({:.0} events/s)",
        rebuilt.generation,
        rebuilt.applied,
        rebuilt.elapsed.as_secs_f64(),
        rebuilt.applied as f64 / rebuilt.elapsed.as_secs_f64().max(1e-9)
    );
    let comparison = es_projections::compare(&worker, "deals", 3).await?;
    print!("{comparison}");
    if !comparison.same() {
        return Err("the shadow generation differs from the live one".into());
    }
    let switched = es_projections::switch(&worker, "deals").await?;
    println!(
        "switched: generation {} is live, {} kept for a rollback",
        switched.to, switched.from
    );
    let after = table_digest(pool).await?;
    println!("md5 of the ordered rows before: {before}");
    println!("md5 of the ordered rows after:  {after}");
    if before != after {
        return Err("the rebuilt table differs from the live one".into());
    }
    println!("identical");

    println!("\n== Verify: every committed event was delivered to the projection");
    let started = Instant::now();
    let report = es_projections::verify(&worker, "deals").await?;
    println!("{report} (in {:.2} s)", started.elapsed().as_secs_f64());
    if !report.ok() {
        return Err("verify found events the projection never saw".into());
    }

    Ok(())
}

/// A wire transfer as a process: the process manager reacts to each step with the next command.
async fn wires(pool: &PgPool) -> Result<(), Error> {
    println!("\n== A wire transfer run by a process manager: debit, credit, refund if refused");
    let accounts = Repository::<Account>::new(PgEventStore::new(pool.clone()));
    let wires = Repository::<Wire>::new(PgEventStore::new(pool.clone()));
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (from, to) = (
        StreamId::new(format!("account-{suffix}-a"))?,
        StreamId::new(format!("account-{suffix}-b"))?,
    );
    for account in [&from, &to] {
        accounts
            .execute(account, AccountCommand::Open { owner: "bo".into() })
            .await?;
    }
    accounts
        .execute(&from, AccountCommand::Deposit { amount: 100 })
        .await?;
    let never_opened = format!("account-{suffix}-closed");
    let (paid, refused) = (
        StreamId::new(format!("wire-{suffix}-1"))?,
        StreamId::new(format!("wire-{suffix}-2"))?,
    );
    for (wire, target) in [(&paid, to.as_str()), (&refused, never_opened.as_str())] {
        let request = WireCommand::Request {
            from: from.to_string(),
            to: target.to_string(),
            amount: 30,
        };
        let metadata = es_core::Metadata::correlated(uuid::Uuid::new_v4());
        wires.execute_with_metadata(wire, request, metadata).await?;
    }
    let manager = WireProcess::new(
        Repository::new(PgEventStore::new(pool.clone())),
        Repository::new(PgEventStore::new(pool.clone())),
    );
    let worker = Worker::new(pool.clone(), upcasters())
        .reactor(manager)?
        .with_config(WorkerConfig {
            poll_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        });
    let done = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let states = (
                wires.load(&paid).await.map(|l| l.state.state),
                wires.load(&refused).await.map(|l| l.state.state),
            );
            if matches!(states, (Ok(WireState::Completed), Ok(WireState::Refunded))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    worker.run(done).await?;
    for wire in [&paid, &refused] {
        println!("{wire}: {:?}", wires.load(wire).await?.state.state);
    }
    // The chain, as the log holds it: each event names the event that caused it.
    let rows: Vec<(String, i64, String, String, Option<String>)> = sqlx::query_as(
        "SELECT e.stream_id, e.stream_version, e.event_type, right(e.event_id::text, 8),
                right(e.metadata->>'causation_id', 8)
         FROM es_events e
         WHERE e.stream_id IN ($1, $2, $3)
           AND (e.metadata->>'correlation_id') = (SELECT metadata->>'correlation_id'
                                                  FROM es_events WHERE stream_id = $4
                                                  AND stream_version = 1)
         ORDER BY e.global_position",
    )
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(refused.as_str())
    .bind(refused.as_str())
    .fetch_all(pool)
    .await?;
    println!(
        "the refused wire's correlation, from the log (event id <- the event that caused it; last 8 hex digits):"
    );
    for (stream, version, event_type, event_id, causation) in &rows {
        println!(
            "  {event_id} <- {:<8}  {stream} v{version} {event_type}",
            causation.as_deref().unwrap_or("request")
        );
    }
    let balances = (
        accounts.load(&from).await?.state.balance,
        accounts.load(&to).await?.state.balance,
    );
    println!("balances: {from} {}, {to} {}", balances.0, balances.1);
    if balances != (70, 30) {
        return Err("the wires must move 30 and refund 30".into());
    }
    Ok(())
}

/// Publishes every event of the log to NATS JetStream and counts it back by message id.
async fn publish(pool: &PgPool, url: &str) -> Result<(), Error> {
    println!("\n== Publishing the whole log to NATS JetStream");
    let options = JetStreamOptions::default();
    let stream_name = options.stream.clone();
    let sink = JetStreamSink::connect(url, options).await?;
    let context = sink.context().clone();
    let publisher = Publisher::new("log_publisher", sink)?;
    let worker = Worker::new(pool.clone(), upcasters())
        .publisher(publisher)?
        .with_config(WorkerConfig {
            batch_size: 2000,
            ..WorkerConfig::default()
        });
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM es_events")
        .fetch_one(pool)
        .await?;
    let applied = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT coalesce(max(events_applied), 0), coalesce(max(watermark), 0)
             FROM es_projections WHERE name = 'log_publisher' AND role = 'live'",
        )
        .fetch_one(pool)
        .await
    };
    let mut stream = context.get_stream(&stream_name).await?;
    let messages_before = stream.info().await?.state.messages;
    let (applied_before, _) = applied().await?;
    let bar = progress_bar(head.max(0) as u64, "publishing", "positions");
    let started = Instant::now();
    let reached = async {
        loop {
            if let Ok((_, watermark)) = applied().await {
                bar.set_position(watermark.max(0) as u64);
                if watermark >= head {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    worker.run(reached).await?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let published = applied().await?.0 - applied_before;
    let stored = stream.info().await?.state.messages - messages_before;
    println!(
        "published {published} events in {elapsed:.1} s ({:.0} events/s); JetStream stream \
         {stream_name} stored {stored} new messages: one per event id",
        published as f64 / elapsed.max(1e-9)
    );
    if stored != published as u64 {
        return Err(
            format!("JetStream stored {stored} messages for {published} events published").into(),
        );
    }
    Ok(())
}

/// An md5 of every row of the deals view, in deal order.
async fn table_digest(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(md5(string_agg(d::text, '|' ORDER BY d.deal_id)), 'empty') FROM deals d",
    )
    .fetch_one(pool)
    .await
}

fn progress_bar(length: u64, message: &'static str, unit: &str) -> ProgressBar {
    es_projections::cli::progress_bar(length, message, unit)
}
