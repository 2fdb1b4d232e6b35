//! The wire transfer process on PostgreSQL: a process manager that debits, credits and refunds
//! through the accounts' repository, exactly once in effect when it is killed at any step, with
//! causation and correlation ids chained through the log.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::{Metadata, Repository, StreamId, StreamVersion};
use es_examples::bank::{Account, AccountCommand};
use es_examples::wire::{StepHook, Wire, WireCommand, WireProcess, WireState, MANAGER};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::{Worker, WorkerConfig};
use sqlx::PgPool;
use uuid::Uuid;

struct Bank {
    accounts: Repository<Account>,
    wires: Repository<Wire>,
}

fn bank(pool: &PgPool) -> Bank {
    Bank {
        accounts: Repository::new(PgEventStore::new(pool.clone())),
        wires: Repository::new(PgEventStore::new(pool.clone())),
    }
}

fn id(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

async fn open(bank: &Bank, account: &str, balance: i64) {
    let stream = id(account);
    bank.accounts
        .execute(
            &stream,
            AccountCommand::Open {
                owner: account.into(),
            },
        )
        .await
        .unwrap();
    if balance > 0 {
        bank.accounts
            .execute(&stream, AccountCommand::Deposit { amount: balance })
            .await
            .unwrap();
    }
}

/// Requests a wire as a user would, with a correlation id of the request.
async fn request(bank: &Bank, wire: &str, from: &str, to: &str, amount: i64) -> Uuid {
    let correlation = Uuid::new_v4();
    bank.wires
        .execute_with_metadata(
            &id(wire),
            WireCommand::Request {
                from: from.into(),
                to: to.into(),
                amount,
            },
            Metadata::correlated(correlation),
        )
        .await
        .unwrap();
    correlation
}

fn worker(pool: &PgPool, owner: &str, hook: Option<StepHook>) -> Worker {
    let bank = bank(pool);
    let mut process = WireProcess::new(bank.accounts, bank.wires);
    if let Some(hook) = hook {
        process = process.with_hook(hook);
    }
    Worker::new(pool.clone(), es_examples::upcasters())
        .reactor(process)
        .unwrap()
        .with_config(WorkerConfig {
            poll_interval: Duration::from_millis(20),
            lease_ttl: Duration::from_millis(500),
            owner: owner.into(),
            ..WorkerConfig::default()
        })
}

/// A worker running in a task until [`Running::stop`].
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), es_projections::ProjectionError>>,
}

impl Running {
    fn start(worker: Worker) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            worker
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self { stop, task }
    }

    /// Shuts it down and asserts it ran without error.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn wait_for_state(bank: &Bank, wire: &str, state: WireState) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let loaded = bank.wires.load(&id(wire)).await.unwrap();
        if loaded.state.state == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "wire {wire} stayed {:?}, expected {state:?}",
            loaded.state.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The events of a stream: (type, event id, causation id, correlation id).
async fn events(pool: &PgPool, stream: &str) -> Vec<(String, Uuid, Option<Uuid>, Option<Uuid>)> {
    sqlx::query_as(
        "SELECT event_type, event_id, (metadata->>'causation_id')::uuid,
                (metadata->>'correlation_id')::uuid
         FROM es_events WHERE stream_id = $1 ORDER BY stream_version",
    )
    .bind(stream)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn balance(bank: &Bank, account: &str) -> i64 {
    bank.accounts
        .load(&id(account))
        .await
        .unwrap()
        .state
        .balance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wire_debits_then_credits_with_causation_and_correlation_chained() {
    let db = TestDatabase::create().await;
    let bank = bank(&db.pool);
    open(&bank, "account-a", 100).await;
    open(&bank, "account-b", 0).await;
    let correlation = request(&bank, "wire-1", "account-a", "account-b", 30).await;
    let worker = worker(&db.pool, "pm", None);
    let running = Running::start(worker);
    wait_for_state(&bank, "wire-1", WireState::Completed).await;
    running.stop().await;
    assert_eq!(
        (
            balance(&bank, "account-a").await,
            balance(&bank, "account-b").await
        ),
        (70, 30)
    );
    // The chain: Requested -> (Withdrawn, Debited) -> (Deposited, Credited).
    let wire = events(&db.pool, "wire-1").await;
    let types: Vec<&str> = wire.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(types, ["WireRequested", "WireDebited", "WireCredited"]);
    let (requested, debited) = (wire[0].1, wire[1].1);
    let withdrawn = events(&db.pool, "account-a").await.pop().unwrap();
    let deposited = events(&db.pool, "account-b").await.pop().unwrap();
    assert_eq!(withdrawn.0, "Withdrawn");
    assert_eq!(deposited.0, "Deposited");
    assert_eq!(
        withdrawn.2,
        Some(requested),
        "the debit was caused by the request"
    );
    assert_eq!(wire[1].2, Some(requested));
    assert_eq!(
        deposited.2,
        Some(debited),
        "the credit was caused by the debit"
    );
    assert_eq!(wire[2].2, Some(debited));
    for event in [&wire[0], &wire[1], &wire[2], &withdrawn, &deposited] {
        assert_eq!(event.3, Some(correlation), "one correlation id: {event:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credit_is_refunded_and_a_refused_debit_moves_nothing() {
    let db = TestDatabase::create().await;
    let bank = bank(&db.pool);
    open(&bank, "account-a", 100).await;
    // account-closed was never opened: it refuses the credit.
    request(&bank, "wire-1", "account-a", "account-closed", 40).await;
    request(&bank, "wire-2", "account-a", "account-closed", 500).await;
    let worker = worker(&db.pool, "pm", None);
    let running = Running::start(worker);
    wait_for_state(&bank, "wire-1", WireState::Refunded).await;
    wait_for_state(&bank, "wire-2", WireState::DebitRefused).await;
    running.stop().await;
    assert_eq!(balance(&bank, "account-a").await, 100);
    let types: Vec<String> = events(&db.pool, "account-a")
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(types, ["Opened", "Deposited", "Withdrawn", "Deposited"]);
    let wire = events(&db.pool, "wire-1").await;
    let refund = events(&db.pool, "account-a").await.pop().unwrap();
    assert_eq!(wire[2].0, "WireCreditRefused");
    assert_eq!(
        refund.2,
        Some(wire[2].1),
        "the refund was caused by the refusal"
    );
}

/// Kills the process manager at `step` of the reaction to the wire event at `version` (its
/// future is dropped there: no checkpoint, no lease release), then lets a standby finish.
async fn killed_at(step: &'static str, version: u64, keys_expire: bool) {
    let db = TestDatabase::create().await;
    let bank = bank(&db.pool);
    open(&bank, "account-a", 100).await;
    open(&bank, "account-b", 0).await;
    request(&bank, "wire-1", "account-a", "account-b", 30).await;
    let reached = Arc::new(tokio::sync::Notify::new());
    let armed = Arc::new(AtomicBool::new(true));
    let hook: StepHook = {
        let (reached, armed) = (reached.clone(), armed.clone());
        Arc::new(move |at, _wire, trigger: StreamVersion| {
            let hit = at == step && trigger.0 == version && armed.swap(false, Ordering::SeqCst);
            let reached = reached.clone();
            Box::pin(async move {
                if hit {
                    reached.notify_one();
                    std::future::pending::<()>().await;
                }
            })
        })
    };
    let doomed = worker(&db.pool, "doomed", Some(hook));
    let handle = tokio::spawn(async move { doomed.run(std::future::pending()).await });
    tokio::time::timeout(Duration::from_secs(30), reached.notified())
        .await
        .unwrap_or_else(|_| panic!("{step} of version {version} never reached"));
    handle.abort();
    let _ = handle.await;
    if keys_expire {
        // The standby comes after the store's idempotency retention (a dead letter retried
        // days later): the keys are gone, the log is not.
        sqlx::query("DELETE FROM es_idempotency_keys")
            .execute(&db.pool)
            .await
            .unwrap();
    }

    let standby = worker(&db.pool, "standby", None);
    let running = Running::start(standby);
    wait_for_state(&bank, "wire-1", WireState::Completed).await;
    // Let the standby go over the log once more: nothing new may come of it.
    let head: i64 = sqlx::query_scalar("SELECT max(global_position) FROM es_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    es_projections::wait_for(
        &db.pool,
        MANAGER,
        es_core::GlobalPosition(head),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    running.stop().await;

    let count = |stream: &'static str, kind: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM es_events WHERE stream_id = $1 AND event_type = $2",
            )
            .bind(stream)
            .bind(kind)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let context = format!(
        "killed {step} of the reaction to version {version}{}",
        if keys_expire { ", keys expired" } else { "" }
    );
    assert_eq!(count("account-a", "Withdrawn").await, 1, "{context}");
    assert_eq!(count("account-b", "Deposited").await, 1, "{context}");
    let wire: Vec<String> = events(&db.pool, "wire-1")
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        wire,
        ["WireRequested", "WireDebited", "WireCredited"],
        "{context}"
    );
    assert_eq!(
        (
            balance(&bank, "account-a").await,
            balance(&bank, "account-b").await
        ),
        (70, 30),
        "{context}"
    );
    let worker = worker(&db.pool, "verifier", None);
    let report = es_projections::verify(&worker, MANAGER).await.unwrap();
    assert!(report.ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_step_the_process_makes_one_command_per_event() {
    for version in [1, 2] {
        for step in ["after_event", "after_command", "after_record"] {
            killed_at(step, version, false).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_delivered_again_after_its_keys_expired_is_not_executed_twice() {
    for version in [1, 2] {
        killed_at("after_command", version, true).await;
    }
}
