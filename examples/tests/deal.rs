#![allow(clippy::unwrap_used)]
//! The deals read model equals a fold of the events, legacy v1 rows included, and the load
//! generator is resumable and idempotent.

use std::sync::Arc;
use std::time::Duration;

use es_core::{Repository, RepositoryError, StreamId};
use es_examples::deal::{
    create_deal, load, upcasters, wait_caught_up, Deal, DealCommand, DealError, DealsProjector,
    LoadOptions, LoadReport,
};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::{ReadModelSource, Worker, WorkerConfig};
use serde_json::{json, Value};

async fn run_until_caught_up(worker: &Worker) {
    let pool = worker.pool().clone();
    let shutdown = async move {
        wait_caught_up(&pool, "deals", Duration::from_millis(50), |_, _| {})
            .await
            .unwrap();
    };
    tokio::time::timeout(Duration::from_secs(120), worker.run(shutdown))
        .await
        .expect("the worker catches up within two minutes")
        .unwrap();
}

async fn assert_read_model_is_the_fold(db: &TestDatabase) -> usize {
    let deals = Repository::<Deal>::new(PgEventStore::new(db.pool.clone()))
        .with_upcasters(Arc::new(upcasters()));
    let rows: Vec<(String, Value, bool, i64)> = sqlx::query_as(
        "SELECT deal_id, configuration, closed, stream_version FROM deals ORDER BY deal_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT stream_id FROM es_events WHERE stream_id LIKE 'deal-%' ORDER BY stream_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        ids,
        "one row per deal stream"
    );
    for (id, configuration, closed, version) in &rows {
        let loaded = deals
            .load(&StreamId::new(id.clone()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            configuration,
            &Value::Object(loaded.state.configuration.clone()),
            "{id}"
        );
        assert_eq!(*closed, loaded.state.closed, "{id}");
        assert_eq!(*version as u64, loaded.version.0, "{id}");
        let gas: Option<String> =
            sqlx::query_scalar("SELECT gas_consumption::text FROM deals WHERE deal_id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(
            gas,
            loaded
                .state
                .configuration
                .get("gasConsumption")
                .map(|v| v.to_string()),
            "{id}: the typed column follows the jsonb"
        );
    }
    rows.len()
}

#[tokio::test]
async fn the_deals_table_equals_a_fold_of_the_events_including_legacy_rows() {
    let db = TestDatabase::create().await;
    let options = LoadOptions {
        deals: 40,
        events: 1500,
        concurrency: 4,
        append_batch: 50,
    };
    let first = load(&db.pool, &options, |_| {}).await.unwrap();
    assert_eq!(first.planned, 1500);
    assert_eq!(first.already_there, 0);
    assert_eq!(first.appended + first.legacy, 1500);
    assert!(first.legacy > 0, "some legacy v1 rows: {first:?}");
    let legacy_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM es_events WHERE schema_version = 1 AND event_type = 'Configured'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(legacy_rows as u64, first.legacy);

    // Run again: nothing to do.
    let again = load(&db.pool, &options, |_| {}).await.unwrap();
    assert_eq!(
        again,
        LoadReport {
            planned: 1500,
            already_there: 1500,
            appended: 0,
            legacy: 0
        }
    );

    // Small batches: many batches, deals spanning them.
    let config = WorkerConfig {
        batch_size: 97,
        catch_up_batch_size: 0,
        poll_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(db.pool.clone(), upcasters())
        .projection(DealsProjector)
        .unwrap()
        .with_config(config);
    run_until_caught_up(&worker).await;
    assert_eq!(assert_read_model_is_the_fold(&db).await, 40);

    // Commands through the repository, then follow them: configure every deal (closed ones
    // refuse), create a new one with its CRM id.
    let deals = Repository::<Deal>::new(PgEventStore::new(db.pool.clone()))
        .with_upcasters(Arc::new(upcasters()));
    let fields = json!({"gasConsumption": 123, "heatPumpInstallationType": "hybrid"});
    let fields = fields.as_object().unwrap().clone();
    let (mut configured, mut refused) = (0, 0);
    for n in 1..=40 {
        let id = StreamId::new(format!("deal-{n}")).unwrap();
        let command = DealCommand::Configure {
            fields: fields.clone(),
        };
        match deals.execute(&id, command).await {
            Ok(_) => configured += 1,
            Err(RepositoryError::Domain(DealError::Closed)) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(refused, 8, "deals 5, 10, ... 40 are closed");
    assert_eq!(configured, 32);
    let new = StreamId::new("deal-new").unwrap();
    let store = PgEventStore::new(db.pool.clone());
    create_deal(&deals, &store, &new, "CRM-NEW").await.unwrap();
    // Created again: the CRM row and the event are one transaction, so the refused second
    // creation leaves the first CRM id (the duplicate row fails first, or the event conflicts).
    assert!(create_deal(&deals, &store, &new, "CRM-OTHER")
        .await
        .is_err());
    let crm: String = sqlx::query_scalar("SELECT crm_id FROM deal_crm_ids WHERE deal_id = $1")
        .bind(new.as_str())
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(crm, "CRM-NEW");
    let outcome = deals
        .execute(&new, DealCommand::Configure { fields })
        .await
        .unwrap();
    let position = outcome.global_position.unwrap();
    run_until_caught_up(&worker).await;
    es_projections::wait_for(&db.pool, "deals", position, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(assert_read_model_is_the_fold(&db).await, 41);
    let hits: i64 = sqlx::query_scalar("SELECT count(*) FROM deals WHERE gas_consumption = 123")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(hits >= 33, "{hits}");

    // A shadow rebuild produces the same table.
    let before: String =
        sqlx::query_scalar("SELECT md5(string_agg(d::text, '|' ORDER BY deal_id)) FROM deals d")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let options = es_projections::RebuildOptions {
        batch_size: 300,
        shadow: true,
        switch: true,
        restart: false,
        ..Default::default()
    };
    es_projections::rebuild(&worker, "deals", &options, |_| {})
        .await
        .unwrap();
    let after: String =
        sqlx::query_scalar("SELECT md5(string_agg(d::text, '|' ORDER BY deal_id)) FROM deals d")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(before, after);
    assert_read_model_is_the_fold(&db).await;

    // The read model as snapshot: loads start from the row and fold only what it lacks.
    let from_rows = Repository::<Deal>::new(PgEventStore::new(db.pool.clone()))
        .with_upcasters(Arc::new(upcasters()))
        .with_state_source(Arc::new(ReadModelSource::new(
            db.pool.clone(),
            DealsProjector,
        )));
    let caught_up = from_rows.load(&new).await.unwrap();
    let replayed = deals.load(&new).await.unwrap();
    assert_eq!(
        caught_up.events_replayed, 0,
        "the row is current: nothing to fold"
    );
    assert_eq!(caught_up.snapshot_version, Some(replayed.version));
    assert_eq!(caught_up.state, replayed.state);
    // Two commands the worker has not seen (it is stopped): the row is stale, the load is not.
    for gas in [7, 8] {
        let fields = json!({ "gasConsumption": gas })
            .as_object()
            .unwrap()
            .clone();
        from_rows
            .execute(&new, DealCommand::Configure { fields })
            .await
            .unwrap();
    }
    let strongly_consistent = from_rows.load(&new).await.unwrap();
    assert_eq!(
        strongly_consistent.events_replayed, 2,
        "the row plus the events after it"
    );
    assert_eq!(
        strongly_consistent.state,
        deals.load(&new).await.unwrap().state
    );
    assert_eq!(
        strongly_consistent.state.configuration["gasConsumption"],
        json!(8)
    );
}
