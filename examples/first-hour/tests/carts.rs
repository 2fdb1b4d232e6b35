//! Against a real PostgreSQL: commands through the repository, then the worker fills `carts`.
//! `DATABASE_URL` names a server; each test gets a fresh database.

use std::time::Duration;

use es_core::{Repository, StreamId};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::Worker;
use shop::cart::{Cart, CartCommand};
use shop::carts_table::CartsProjector;

#[tokio::test]
async fn the_carts_table_follows_the_commands() -> Result<(), Box<dyn std::error::Error>> {
    let db = TestDatabase::create().await;
    let carts = Repository::<Cart>::new(PgEventStore::new(db.pool.clone()));
    let id = StreamId::new("cart-7")?;
    let add = CartCommand::AddItem {
        sku: "apple".into(),
        quantity: 2,
    };
    carts.execute(&id, add.clone()).await?;
    carts.execute(&id, add).await?;
    let outcome = carts.execute(&id, CartCommand::CheckOut).await?;

    // Run the worker until the projection has applied the last command's events.
    let last = outcome
        .global_position
        .ok_or("checking out wrote an event")?;
    let worker = Worker::new(db.pool.clone(), shop::upcasters()).projection(CartsProjector)?;
    let caught_up = async {
        es_projections::wait_for(&db.pool, "carts", last, Duration::from_secs(10))
            .await
            .expect("the worker catches up");
    };
    worker.run(caught_up).await?;

    let row: (i64, bool, i64) =
        sqlx::query_as("SELECT items, checked_out, stream_version FROM carts WHERE cart_id = $1")
            .bind(id.as_str())
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(row, (4, true, 3));
    Ok(())
}
