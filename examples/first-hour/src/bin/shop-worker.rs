//! The worker: `shop-worker run` keeps the read tables up to date, `shop-worker status` shows
//! how far behind they are. Run several copies: one works, the others stand by.

use es_projections::Worker;
use shop::carts_table::CartsProjector;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    es_projections::cli::main("shop-worker", |pool| {
        Worker::new(pool, shop::upcasters()).projection(CartsProjector)
    })
    .await
}
