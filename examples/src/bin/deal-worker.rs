//! The deals projection worker: `deal-worker run | status | rebuild deals [--shadow]`.

use es_examples::deal::DealsProjector;
use es_examples::upcasters;
use es_projections::Worker;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    es_projections::cli::main("deal-worker", |pool| {
        Worker::new(pool, upcasters()).projection(DealsProjector)
    })
    .await
}
