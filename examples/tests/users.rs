//! Unique e-mail addresses across users on PostgreSQL: 32 users register one address at once and
//! one gets it; changing address releases the old one; the claims can be rebuilt from the log.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use es_core::{EventStore, Repository, RepositoryError, StoreError, StreamId};
use es_examples::users::{User, UserCommand, EMAIL_SCOPE};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_users_race_for_one_address() {
    let db = TestDatabase::with_max_connections(40).await;
    let store = PgEventStore::new(db.pool.clone());
    let users = Arc::new(Repository::<User>::new(store.clone()));
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|n| {
            let (users, barrier) = (users.clone(), barrier.clone());
            tokio::spawn(async move {
                let id = StreamId::new(format!("user-{n}")).unwrap();
                barrier.wait().await;
                let register = UserCommand::Register {
                    email: "ann@example.com".into(),
                };
                (id.clone(), users.execute(&id, register).await)
            })
        })
        .collect();
    let mut winner = None;
    for task in tasks {
        match task.await.unwrap() {
            (id, Ok(_)) => {
                assert!(winner.is_none(), "two users got the address");
                winner = Some(id);
            }
            (_, Err(RepositoryError::Store(StoreError::UniqueValueTaken { .. }))) => {}
            (_, Err(other)) => panic!("{other}"),
        }
    }
    let winner = winner.expect("one user got the address");
    let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(registered, 1, "the refused registrations wrote nothing");

    // The winner moves on; a loser takes the address.
    let change = UserCommand::ChangeEmail {
        email: "ann@work.example".into(),
    };
    users.execute(&winner, change).await.unwrap();
    let other = StreamId::new(if winner.as_str() == "user-0" {
        "user-1"
    } else {
        "user-0"
    })
    .unwrap();
    let register = UserCommand::Register {
        email: "ann@example.com".into(),
    };
    users.execute(&other, register).await.unwrap();

    // The claims table lost: rebuilt from the events, it says the same.
    sqlx::query("DELETE FROM es_unique_claims")
        .execute(&db.pool)
        .await
        .unwrap();
    let held = store
        .rebuild_unique_claims(&[EMAIL_SCOPE], |event| users.unique_changes_of(event))
        .await
        .unwrap();
    assert_eq!(held, 2);
    for (email, holder) in [("ann@example.com", &other), ("ann@work.example", &winner)] {
        assert_eq!(
            store
                .unique_holder(EMAIL_SCOPE, email)
                .await
                .unwrap()
                .as_ref(),
            Some(holder)
        );
    }
}
