//! The application: `shop add CART SKU QUANTITY` and `shop checkout CART` run a command on a
//! cart, `shop show CART` prints it. `DATABASE_URL` names the PostgreSQL database.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use es_core::{Repository, StreamId};
use es_postgres::PgEventStore;
use shop::cart::{Cart, CartCommand};

#[tokio::main]
async fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shop: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    let pool = es_postgres::connect(&url, 5, Duration::from_secs(5)).await?;
    // Creates the framework's tables (es_events, ...) if they are not there yet.
    es_postgres::migrate(&pool).await?;
    let carts = Repository::<Cart>::new(PgEventStore::new(pool))
        .with_upcasters(Arc::new(shop::upcasters()));

    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (cart, command) = match args.as_slice() {
        ["add", cart, sku, quantity] => {
            let quantity = quantity.parse().map_err(|_| "QUANTITY must be a number")?;
            let sku = sku.to_string();
            (cart, Some(CartCommand::AddItem { sku, quantity }))
        }
        ["checkout", cart] => (cart, Some(CartCommand::CheckOut)),
        ["show", cart] => (cart, None),
        _ => return Err("usage: shop add CART SKU QUANTITY | checkout CART | show CART".into()),
    };
    let id = StreamId::new(format!("cart-{cart}"))?;
    if let Some(command) = command {
        let outcome = carts.execute(&id, command).await?;
        println!("{id} is at version {}", outcome.stream_version);
    }
    let cart = carts.load(&id).await?.state;
    println!(
        "{id}: {} items, checked out: {}",
        cart.items, cart.checked_out
    );
    Ok(())
}
