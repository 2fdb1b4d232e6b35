//! Helpers shared by the store's integration tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use es_core::{conformance, EventData, StreamId};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use serde_json::json;
use sqlx::PgPool;

/// A stream id (test names are valid).
pub fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap()
}

/// A small test event, told apart by `i`.
pub fn event(i: usize) -> EventData {
    EventData::raw("Happened", 1, json!({ "i": i }))
}

/// Runs the store conformance suite on stores built by `build`, each on a fresh database that
/// lives until the suite ends.
pub async fn conforms(build: fn(PgPool) -> PgEventStore) {
    let databases = Arc::new(Mutex::new(Vec::new()));
    conformance::run_all(move || {
        let databases = databases.clone();
        async move {
            let db = TestDatabase::with_max_connections(40).await;
            let store = build(db.pool.clone());
            databases.lock().unwrap().push(db);
            store
        }
    })
    .await;
}
