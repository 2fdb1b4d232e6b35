//! The in-memory store passes the same conformance suite as the PostgreSQL store.

#![allow(clippy::unwrap_used)]

use es_core::{conformance, InMemoryStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_store_conforms() {
    conformance::run_all(|| async { InMemoryStore::new() }).await;
}
