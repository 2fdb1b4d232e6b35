//! The end-to-end demo: writes events to PostgreSQL through the framework, shows a conflict
//! and its retry, and loads aggregates back. Run it with `scripts/demo`.

use std::sync::Arc;

use es_core::{EventStore, ExpectedVersion, Repository, RepositoryError, StreamId};
use es_examples::bank::{Account, AccountCommand, AccountError};
use es_postgres::PgEventStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await?;
    es_postgres::migrate(&pool).await?;
    let store = PgEventStore::new(pool.clone());
    let accounts = Arc::new(Repository::<Account>::new(store.clone()));

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
        .fetch_one(&pool)
        .await?;
    println!("{id} holds {count} events in es_events");
    Ok(())
}
