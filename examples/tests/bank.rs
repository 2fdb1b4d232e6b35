//! The bank account on PostgreSQL: no overdraft under concurrent withdrawals (conflicts retried),
//! and two projectors that read different event types of the same streams.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use es_core::{
    CommandOptions, GlobalPosition, IdempotencyKey, Repository, RepositoryError, RetryPolicy,
    StreamId,
};
use es_examples::bank::{
    transfer, Account, AccountCommand, AccountError, BalancesProjector, OwnersProjector,
};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::Worker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_withdrawals_never_overdraw_and_both_projections_agree() {
    let db = TestDatabase::with_max_connections(30).await;
    // A hot stream: allow many attempts (the default policy gives up sooner, by design).
    let retry = RetryPolicy {
        max_attempts: 100,
        ..RetryPolicy::default()
    };
    let accounts =
        Arc::new(Repository::<Account>::new(PgEventStore::new(db.pool.clone())).with_retry(retry));
    let ids: Vec<StreamId> = (0..10)
        .map(|i| StreamId::new(format!("account-{i}")).unwrap())
        .collect();
    let mut last = GlobalPosition(0);
    for (i, id) in ids.iter().enumerate() {
        let owner = format!("owner-{}", i % 3);
        accounts
            .execute(id, AccountCommand::Open { owner })
            .await
            .unwrap();
        last = accounts
            .execute(id, AccountCommand::Deposit { amount: 1_000 })
            .await
            .unwrap()
            .global_position
            .unwrap();
    }
    // 8 tasks each try 15 withdrawals of 30 from every account: 120 x 30 = 3,600 asked of each
    // balance of 1,000. Exactly 33 per account can pass.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (accounts, ids) = (accounts.clone(), ids.clone());
            tokio::spawn(async move {
                let (mut accepted, mut refused, mut retries, mut last) =
                    (0, 0, 0, GlobalPosition(0));
                for _ in 0..15 {
                    for id in &ids {
                        match accounts
                            .execute(id, AccountCommand::Withdraw { amount: 30 })
                            .await
                        {
                            Ok(outcome) => {
                                accepted += 1;
                                retries += outcome.attempts - 1;
                                last = last.max(outcome.global_position.unwrap());
                            }
                            Err(RepositoryError::Domain(AccountError::InsufficientFunds {
                                ..
                            })) => refused += 1,
                            Err(other) => panic!("unexpected {other}"),
                        }
                    }
                }
                (accepted, refused, retries, last)
            })
        })
        .collect();
    let (mut accepted, mut refused, mut retries) = (0, 0, 0);
    for task in tasks {
        let (a, r, t, l) = task.await.unwrap();
        accepted += a;
        refused += r;
        retries += t;
        last = last.max(l);
    }
    assert_eq!(accepted, 10 * 33, "every account pays out exactly 33 x 30");
    assert_eq!(refused, 8 * 15 * 10 - 10 * 33);
    assert!(retries > 0, "the race caused conflicts that were retried");
    for id in &ids {
        assert_eq!(accounts.load(id).await.unwrap().state.balance, 10);
    }

    let worker = Worker::new(db.pool.clone(), es_examples::upcasters())
        .projection(BalancesProjector)
        .unwrap()
        .projection(OwnersProjector)
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    for name in ["account_balances", "account_owners"] {
        es_projections::wait_for(&db.pool, name, last, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();

    let balances: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT account_id, balance, stream_version FROM account_balances ORDER BY account_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(balances.len(), 10);
    for (id, balance, version) in balances {
        let loaded = accounts.load(&StreamId::new(id).unwrap()).await.unwrap();
        assert_eq!(
            (balance, version as u64),
            (loaded.state.balance, loaded.version.0)
        );
    }
    let owners: Vec<(String, i64)> =
        sqlx::query_as("SELECT owner, count(*) FROM account_owners GROUP BY owner ORDER BY owner")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        owners,
        vec![
            ("owner-0".into(), 4),
            ("owner-1".into(), 3),
            ("owner-2".into(), 3)
        ]
    );
    // The owners projector received the ten Opened events and nothing else.
    let applied: i64 = sqlx::query_scalar(
        "SELECT events_applied FROM es_projections WHERE name = 'account_owners'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(applied, 10);
}

/// 32 tasks move money between overlapping pairs of 8 accounts, each transfer one commit over
/// two streams (with an idempotency key, retried once as a client would after a timeout):
/// money is conserved, no account is overdrawn, each transfer's two events share one
/// PostgreSQL transaction, and every stream's versions are contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_conserve_money() {
    let db = TestDatabase::with_max_connections(40).await;
    let retry = RetryPolicy {
        max_attempts: 200,
        ..RetryPolicy::default()
    };
    let accounts =
        Arc::new(Repository::<Account>::new(PgEventStore::new(db.pool.clone())).with_retry(retry));
    let ids: Vec<StreamId> = (0..8)
        .map(|i| StreamId::new(format!("account-{i}")).unwrap())
        .collect();
    for id in &ids {
        let owner = id.to_string();
        accounts
            .execute(id, AccountCommand::Open { owner })
            .await
            .unwrap();
        accounts
            .execute(id, AccountCommand::Deposit { amount: 100 })
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..32usize)
        .map(|task| {
            let (accounts, ids) = (accounts.clone(), ids.clone());
            tokio::spawn(async move {
                let mut moved = 0;
                for round in 0..10usize {
                    let from = &ids[(task + round) % 8];
                    let to = &ids[(task + round + 1 + task % 3) % 8];
                    let key = format!("transfer-{task}-{round}");
                    let options = || {
                        CommandOptions::default().idempotency_key(
                            IdempotencyKey::for_request(&key, &(from, to, 7)).unwrap(),
                        )
                    };
                    match transfer(&accounts, from, to, 7, options()).await {
                        Ok(outcome) => {
                            assert!(!outcome.replayed);
                            moved += 1;
                            // The client retries (its answer was lost): nothing moves twice.
                            let again = transfer(&accounts, from, to, 7, options()).await.unwrap();
                            assert!(again.replayed);
                            assert_eq!(again.streams, outcome.streams);
                        }
                        Err(RepositoryError::Domain(AccountError::InsufficientFunds {
                            ..
                        })) => {}
                        Err(other) => panic!("{other}"),
                    }
                }
                moved
            })
        })
        .collect();
    let mut moved = 0;
    for task in tasks {
        moved += task.await.unwrap();
    }
    assert!(moved > 0);
    let mut total = 0;
    for id in &ids {
        let balance = accounts.load(id).await.unwrap().state.balance;
        assert!(balance >= 0, "{id} is overdrawn: {balance}");
        total += balance;
    }
    assert_eq!(total, 800, "money is conserved");
    let transfers: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT count(*), count(DISTINCT transaction_id) FROM es_events
         WHERE event_type IN ('Withdrawn', 'Deposited') AND stream_version > 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        transfers,
        vec![(2 * moved, moved)],
        "two events per transaction"
    );
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT stream_version,
                row_number() OVER (PARTITION BY stream_id ORDER BY stream_version) AS n
             FROM es_events) v WHERE stream_version <> n",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(gaps, 0, "every stream's versions are contiguous");
}

#[tokio::test]
async fn a_transfer_needs_two_accounts_and_the_money() {
    let accounts = Repository::<Account>::new(es_core::InMemoryStore::new());
    let (a, b) = (
        StreamId::new("account-a").unwrap(),
        StreamId::new("account-b").unwrap(),
    );
    for id in [&a, &b] {
        accounts
            .execute(id, AccountCommand::Open { owner: "o".into() })
            .await
            .unwrap();
    }
    accounts
        .execute(&a, AccountCommand::Deposit { amount: 10 })
        .await
        .unwrap();
    assert!(matches!(
        transfer(&accounts, &a, &a, 1, CommandOptions::default()).await,
        Err(RepositoryError::Domain(AccountError::SameAccount))
    ));
    assert!(matches!(
        transfer(&accounts, &a, &b, 11, CommandOptions::default()).await,
        Err(RepositoryError::Domain(
            AccountError::InsufficientFunds { .. }
        ))
    ));
    let moved = transfer(&accounts, &a, &b, 4, CommandOptions::default())
        .await
        .unwrap();
    assert_eq!(
        moved
            .streams
            .iter()
            .map(|s| s.stream_version.0)
            .collect::<Vec<_>>(),
        vec![3, 2]
    );
    assert_eq!(accounts.load(&a).await.unwrap().state.balance, 6);
    assert_eq!(accounts.load(&b).await.unwrap().state.balance, 4);
}
