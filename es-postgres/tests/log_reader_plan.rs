//! The log reader's statement reads what a batch needs, not the log: with holes far below the
//! watermark of a large log, its plan (custom and generic, as a pooled connection caches it)
//! touches a few rows of `es_events`, never all of them. A plan that walked the primary key in
//! order and filtered every row against every hole made one read of a shadow switch run for
//! minutes.

#![allow(clippy::unwrap_used)]

use es_postgres::testing::TestDatabase;
use serde_json::Value;

const READ_LOG: &str = include_str!("../src/sql/read_log.sql");

/// Rows read from `es_events` by every node of an `EXPLAIN (ANALYZE, FORMAT JSON)` plan.
fn event_rows_read(plan: &Value) -> f64 {
    let own = if plan["Relation Name"] == "es_events" {
        let rows = plan["Actual Rows"].as_f64().unwrap_or(0.0)
            + plan["Rows Removed by Filter"].as_f64().unwrap_or(0.0);
        rows * plan["Actual Loops"].as_f64().unwrap_or(1.0)
    } else {
        0.0
    };
    own + plan["Plans"]
        .as_array()
        .map(|children| children.iter().map(event_rows_read).sum())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn holes_are_read_by_index_ranges_whatever_the_size_of_the_log() {
    let db = TestDatabase::create().await;
    sqlx::query(
        "INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload)
         SELECT gen_random_uuid(), 'bulk-' || (v % 100), v / 100 + 1, 'Counted', 1, '{}'
         FROM generate_series(0, 49999) AS v",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE es_events")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(&format!(
        "PREPARE read_log_plan(bigint, bigint, bigint[], bigint[]) AS {READ_LOG}"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    // Six runs: PostgreSQL may switch to a generic plan after five.
    for run in 0..6 {
        let plan: Value = sqlx::query_scalar(
            "EXPLAIN (ANALYZE, FORMAT JSON)
             EXECUTE read_log_plan(49000, 100, '{10, 25000}', '{12, 25000}')",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let read = event_rows_read(&plan[0]["Plan"]);
        assert!(
            read < 1_000.0,
            "run {run} read {read} rows of es_events for 4 hole positions and 100 new events:\n{plan:#}"
        );
    }
}
