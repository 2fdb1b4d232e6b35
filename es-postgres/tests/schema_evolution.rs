//! Schema evolution against a real PostgreSQL: rows written by older deployments (inserted here
//! by raw SQL, as they wrote them) load as the current schema through upcasters; renamed types
//! arrive under their new name; broken registries fail at build; events with no path, or of a
//! type nobody registered, are typed errors that name the event; and writing always stamps the
//! current schema version.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use es_core::{
    Aggregate, DecodeError, DecodeErrorKind, DomainEvent, EventData, EventLocation, EventStore,
    ExpectedVersion, GlobalPosition, Metadata, Repository, RepositoryError, StreamId,
    StreamVersion, UpcasterChainError, Upcasters, UpcastersBuilder,
};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;

// ---------------------------------------------------------------------------------------------
// The domain, at its current schema. Its history:
//
// - `Titled` v2 was called `DealNamed` at v1, with `{"name": ...}`.
// - `Configured` v1 carried one field: `{"field": "gasConsumption", "value": 12000}`;
//   v2 carried several: `{"fields": {...}}`;
//   v3 (current) also says where they came from: `{"fields": {...}, "source": "crm"}`.
// - `Closed` never changed (v1).
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum DealEvent {
    Titled {
        title: String,
    },
    Configured {
        fields: BTreeMap<String, Value>,
        source: String,
    },
    Closed,
}

impl DomainEvent for DealEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] =
        &[("Titled", 2), ("Configured", 3), ("Closed", 1)];
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Deal {
    title: Option<String>,
    fields: BTreeMap<String, Value>,
    sources: Vec<String>,
    closed: bool,
}

#[derive(Clone, Debug)]
enum DealCommand {
    Retitle(String),
    Configure {
        fields: BTreeMap<String, Value>,
        source: String,
    },
    Close,
}

#[derive(Debug, thiserror::Error)]
#[error("the deal is closed")]
struct DealClosed;

impl Aggregate for Deal {
    const TYPE: &'static str = "deal";
    type Command = DealCommand;
    type Event = DealEvent;
    type Error = DealClosed;

    fn handle(&self, command: DealCommand) -> Result<Vec<DealEvent>, DealClosed> {
        if self.closed {
            return Err(DealClosed);
        }
        Ok(vec![match command {
            DealCommand::Retitle(title) => DealEvent::Titled { title },
            DealCommand::Configure { fields, source } => DealEvent::Configured { fields, source },
            DealCommand::Close => DealEvent::Closed,
        }])
    }

    fn apply(&mut self, event: &DealEvent) {
        match event {
            DealEvent::Titled { title } => self.title = Some(title.clone()),
            DealEvent::Configured { fields, source } => {
                // Later events overwrite earlier keys.
                self.fields
                    .extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                self.sources.push(source.clone());
            }
            DealEvent::Closed => self.closed = true,
        }
    }
}

/// Another enum registered in the same registry (a different aggregate's events).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CustomerEvent {
    Registered { email: String },
}

impl DomainEvent for CustomerEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Registered", 1)];
}

/// The deal's complete upcaster registry, without `build()`, so tests can break it.
fn deal_upcasters() -> UpcastersBuilder {
    Upcasters::builder()
        .register::<DealEvent>()
        .register::<CustomerEvent>()
        .rename("DealNamed", 1, "Titled", |v1| {
            Ok(json!({ "title": v1["name"] }))
        })
        .step("Configured", 1, |v1| {
            let field = v1["field"]
                .as_str()
                .ok_or_else(|| format!("v1 Configured has no field name: {v1}"))?;
            Ok(json!({ "fields": { field: v1["value"] } }))
        })
        .step("Configured", 2, |mut v2| {
            // Before v3 every configuration came from the legacy importer.
            v2["source"] = json!("legacy");
            Ok(v2)
        })
}

fn repository(store: &PgEventStore) -> Repository<Deal> {
    Repository::<Deal>::new(store.clone())
        .with_upcasters(Arc::new(deal_upcasters().build().unwrap()))
}

fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap()
}

fn fields(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Writes a row as an old deployment did: straight into `es_events`. Returns its position.
async fn insert_old_row(
    pool: &PgPool,
    stream: &str,
    stream_version: i64,
    event_type: &str,
    schema_version: i32,
    payload: Value,
    metadata: Value,
) -> GlobalPosition {
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO es_events \
             (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         RETURNING global_position",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(stream)
    .bind(stream_version)
    .bind(event_type)
    .bind(schema_version)
    .bind(payload)
    .bind(metadata)
    .fetch_one(pool)
    .await
    .unwrap();
    // The old deployment's store recorded the pair, as every store does.
    let version = u32::try_from(schema_version).unwrap();
    PgEventStore::new(pool.clone())
        .record_event_types(&[(event_type, version)])
        .await
        .unwrap();
    GlobalPosition(position)
}

/// (event_type, schema_version) of a stream's stored rows, in stream order.
async fn stored_types(pool: &PgPool, stream: &str) -> Vec<(String, i32)> {
    sqlx::query_as(
        "SELECT event_type, schema_version FROM es_events \
         WHERE stream_id = $1 ORDER BY stream_version",
    )
    .bind(stream)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A deal written across three deployments: v1 and v2 rows by raw SQL, then v3 by the store.
async fn write_deal_history(pool: &PgPool, store: &PgEventStore, id: &str) {
    insert_old_row(
        pool,
        id,
        1,
        "DealNamed",
        1,
        json!({ "name": "Heat pump for the Smiths" }),
        json!({ "actor": "importer-2019" }),
    )
    .await;
    insert_old_row(
        pool,
        id,
        2,
        "Configured",
        1,
        json!({ "field": "gasConsumption", "value": 12000 }),
        json!({}),
    )
    .await;
    insert_old_row(
        pool,
        id,
        3,
        "Configured",
        2,
        json!({ "fields": { "gasConsumption": 11000, "heatPumpInstallationType": "split" } }),
        json!({}),
    )
    .await;
    let v3 = DealEvent::Configured {
        fields: fields(&[("gasConsumption", json!(9000))]),
        source: "crm".into(),
    };
    store
        .append(
            &stream(id),
            ExpectedVersion::Exact(StreamVersion(3)),
            vec![EventData::from_event(&v3, Metadata::default()).unwrap()],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_every_version_load_as_the_current_schema() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    write_deal_history(&db.pool, &store, "deal-1").await;
    let deals = repository(&store);
    let id = stream("deal-1");

    let loaded = deals.load(&id).await.unwrap();
    assert_eq!(loaded.version, StreamVersion(4));
    assert_eq!(loaded.events_replayed, 4);
    assert_eq!(
        loaded.state,
        Deal {
            title: Some("Heat pump for the Smiths".into()),
            fields: fields(&[
                ("gasConsumption", json!(9000)),
                ("heatPumpInstallationType", json!("split")),
            ]),
            sources: vec!["legacy".into(), "legacy".into(), "crm".into()],
            closed: false,
        }
    );

    // Event by event, through the same registry (the path projectors take too).
    let upcasters = deal_upcasters().build().unwrap();
    let recorded = store
        .read_stream(&id, StreamVersion::INITIAL, None)
        .await
        .unwrap();
    let decoded: Vec<_> = recorded
        .into_iter()
        .map(|e| upcasters.decode::<DealEvent>(e).unwrap().unwrap())
        .collect();
    let events: Vec<_> = decoded.iter().map(|e| e.event.clone()).collect();
    assert_eq!(
        events,
        vec![
            DealEvent::Titled {
                title: "Heat pump for the Smiths".into()
            },
            DealEvent::Configured {
                fields: fields(&[("gasConsumption", json!(12000))]),
                source: "legacy".into()
            },
            DealEvent::Configured {
                fields: fields(&[
                    ("gasConsumption", json!(11000)),
                    ("heatPumpInstallationType", json!("split"))
                ]),
                source: "legacy".into()
            },
            DealEvent::Configured {
                fields: fields(&[("gasConsumption", json!(9000))]),
                source: "crm".into()
            },
        ]
    );
    // The envelope survives upcasting: metadata written by the old deployment is still there.
    assert_eq!(decoded[0].metadata.actor.as_deref(), Some("importer-2019"));

    // The global log decodes the same way.
    let from_log: Vec<_> = store
        .read_all(GlobalPosition::START, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| upcasters.decode::<DealEvent>(e).unwrap().unwrap().event)
        .collect();
    assert_eq!(from_log, events);

    // Stored rows are never rewritten: upcasting happens on read only.
    assert_eq!(
        stored_types(&db.pool, "deal-1").await,
        vec![
            ("DealNamed".into(), 1),
            ("Configured".into(), 1),
            ("Configured".into(), 2),
            ("Configured".into(), 3),
        ]
    );

    // A command on the old stream is decided on the upcast state and appended after it.
    let outcome = deals.execute(&id, DealCommand::Close).await.unwrap();
    assert_eq!(outcome.stream_version, StreamVersion(5));
    assert!(deals.load(&id).await.unwrap().state.closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_type_arrives_under_its_new_name() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let id = stream("deal-renamed");
    insert_old_row(
        &db.pool,
        id.as_str(),
        1,
        "DealNamed",
        1,
        json!({ "name": "Solar roof" }),
        json!({}),
    )
    .await;
    let upcasters = deal_upcasters().build().unwrap();

    let recorded = store
        .read_stream(&id, StreamVersion::INITIAL, None)
        .await
        .unwrap();
    let upcast = upcasters.upcast(recorded[0].clone()).unwrap();
    assert_eq!(
        (upcast.event_type.as_str(), upcast.schema_version),
        ("Titled", 2)
    );
    assert_eq!(upcast.payload, json!({ "title": "Solar roof" }));
    let envelope = upcasters
        .decode::<DealEvent>(recorded[0].clone())
        .unwrap()
        .unwrap();
    assert_eq!(envelope.event_type, "Titled");
    assert_eq!(
        envelope.event,
        DealEvent::Titled {
            title: "Solar roof".into()
        }
    );
    assert_eq!(
        repository(&store).load(&id).await.unwrap().state.title,
        Some("Solar roof".into())
    );

    // Without the rename the old name is just an unknown type.
    let without_upcasters = Repository::<Deal>::new(store.clone());
    match without_upcasters.load(&id).await {
        Err(RepositoryError::Decode(DecodeError {
            at,
            kind: DecodeErrorKind::UnknownEventType,
        })) => {
            assert_eq!(at.event_type, "DealNamed")
        }
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
}

#[test]
fn a_chain_with_a_missing_step_fails_to_build() {
    // Configured v1 -> v2 registered, v2 -> v3 forgotten.
    let missing = Upcasters::builder()
        .register::<DealEvent>()
        .step("Configured", 1, Ok)
        .build();
    assert_eq!(
        missing.err(),
        Some(UpcasterChainError::MissingStep {
            event_type: "Configured".into(),
            version: 2,
            current: 3,
        })
    );

    // A rename to a type no registered enum defines.
    let nowhere = Upcasters::builder()
        .register::<DealEvent>()
        .rename("DealNamed", 1, "Title", Ok)
        .build();
    assert_eq!(
        nowhere.err(),
        Some(UpcasterChainError::UnknownTarget {
            from_type: "DealNamed".into(),
            from_version: 1,
            event_type: "Title".into(),
            version: 2,
        })
    );

    // Two steps from the same place.
    let duplicate = deal_upcasters().step("Configured", 2, Ok).build();
    assert_eq!(
        duplicate.err(),
        Some(UpcasterChainError::DuplicateStep {
            event_type: "Configured".into(),
            version: 2,
        })
    );

    // The complete registry builds.
    assert!(deal_upcasters().build().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_with_no_path_is_a_typed_error_naming_the_event() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let deals = repository(&store);
    // This process started (and checked the log) before the newer deployment wrote.
    deals.check_stored().await.unwrap();
    let id = stream("deal-from-the-future");
    insert_old_row(
        &db.pool,
        id.as_str(),
        1,
        "Titled",
        2,
        json!({ "title": "ok" }),
        json!({}),
    )
    .await;
    // Written by a newer deployment than this code knows.
    let position = insert_old_row(
        &db.pool,
        id.as_str(),
        2,
        "Configured",
        9,
        json!({ "fields": {}, "source": "x", "confidence": 0.5 }),
        json!({}),
    )
    .await;

    let error = deals.load(&id).await.unwrap_err();
    let message = error.to_string();
    match error {
        RepositoryError::Decode(DecodeError {
            at,
            kind: DecodeErrorKind::NoUpcastPath { current_version },
        }) => {
            assert_eq!(
                at,
                EventLocation {
                    stream: id.clone(),
                    stream_version: StreamVersion(2),
                    position,
                    event_type: "Configured".into(),
                    schema_version: 9,
                }
            );
            assert_eq!(current_version, 3);
        }
        other => panic!("expected NoUpcastPath, got {other:?}"),
    }
    for part in [
        "deal-from-the-future",
        "Configured v9",
        &format!("position {position}"),
        "version 2",
    ] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }

    // A command on that stream fails the same way and writes nothing.
    assert!(matches!(
        deals.execute(&id, DealCommand::Close).await,
        Err(RepositoryError::Decode(DecodeError {
            kind: DecodeErrorKind::NoUpcastPath { .. },
            ..
        }))
    ));
    assert_eq!(stored_types(&db.pool, id.as_str()).await.len(), 2);

    // A version below the first registered step has no path either: the registry only checks
    // chains that start somewhere, so every version ever written needs its step.
    let from_v2_only = Upcasters::builder()
        .register::<DealEvent>()
        .step("Configured", 2, Ok)
        .build()
        .unwrap();
    let v1 = stream("deal-v1");
    insert_old_row(
        &db.pool,
        v1.as_str(),
        1,
        "Configured",
        1,
        json!({ "field": "gasConsumption", "value": 1 }),
        json!({}),
    )
    .await;
    let partial = Repository::<Deal>::new(store.clone()).with_upcasters(Arc::new(from_v2_only));
    // Started now, it refuses before reading any stream: the log holds Configured v1 (and v9),
    // which it has no path for.
    let refused = partial.load(&v1).await;
    assert!(
        matches!(
            &refused,
            Err(RepositoryError::Unreadable(UpcasterChainError::StoredWithoutPath {
                schema_version: 1,
                current: 3,
                event_type,
                ..
            })) if event_type == "Configured"
        ),
        "{refused:?}"
    );
    assert!(matches!(
        repository(&store).execute(&id, DealCommand::Close).await,
        Err(RepositoryError::Unreadable(
            UpcasterChainError::StoredWithoutPath {
                schema_version: 9,
                ..
            }
        ))
    ));
    partial.check_stored().await.unwrap_err();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_type_in_a_stream_is_a_typed_error_naming_the_event() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let deals = repository(&store);

    // A type nobody registered.
    let id = stream("deal-mystery");
    insert_old_row(
        &db.pool,
        id.as_str(),
        1,
        "Titled",
        2,
        json!({ "title": "ok" }),
        json!({}),
    )
    .await;
    let position = insert_old_row(
        &db.pool,
        id.as_str(),
        2,
        "DealArchived",
        4,
        json!({}),
        json!({}),
    )
    .await;
    let error = deals.load(&id).await.unwrap_err();
    let message = error.to_string();
    match error {
        RepositoryError::Decode(DecodeError {
            at,
            kind: DecodeErrorKind::UnknownEventType,
        }) => {
            assert_eq!(
                at,
                EventLocation {
                    stream: id.clone(),
                    stream_version: StreamVersion(2),
                    position,
                    event_type: "DealArchived".into(),
                    schema_version: 4,
                }
            );
        }
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
    for part in [
        "deal-mystery",
        "DealArchived v4",
        &format!("position {position}"),
    ] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }

    // A registered type that belongs to another aggregate: a projector could skip it, but an
    // aggregate's stream must hold only its own events.
    let id = stream("deal-with-a-customer-event");
    let position = insert_old_row(
        &db.pool,
        id.as_str(),
        1,
        "Registered",
        1,
        json!({ "email": "ann@example.com" }),
        json!({}),
    )
    .await;
    match deals.load(&id).await {
        Err(RepositoryError::Decode(DecodeError {
            at,
            kind: DecodeErrorKind::UnknownEventType,
        })) => {
            assert_eq!(
                at,
                EventLocation {
                    stream: id.clone(),
                    stream_version: StreamVersion(1),
                    position,
                    event_type: "Registered".into(),
                    schema_version: 1,
                }
            );
        }
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
    let recorded = store
        .read_stream(&id, StreamVersion::INITIAL, None)
        .await
        .unwrap();
    let upcasters = deal_upcasters().build().unwrap();
    assert!(matches!(
        upcasters.decode::<DealEvent>(recorded[0].clone()),
        Ok(None)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upcaster_is_a_typed_error_naming_the_event() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let id = stream("deal-bad-v1");
    // A v1 row without the field name the v1 -> v2 step needs.
    let position = insert_old_row(
        &db.pool,
        id.as_str(),
        1,
        "Configured",
        1,
        json!({ "value": 3 }),
        json!({}),
    )
    .await;
    match repository(&store).load(&id).await {
        Err(RepositoryError::Decode(DecodeError {
            at,
            kind: DecodeErrorKind::UpcasterFailed { message },
        })) => {
            assert_eq!(
                at,
                EventLocation {
                    stream: id.clone(),
                    stream_version: StreamVersion(1),
                    position,
                    event_type: "Configured".into(),
                    schema_version: 1,
                }
            );
            assert!(message.contains("no field name"), "{message}");
        }
        other => panic!("expected UpcasterFailed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_always_stamps_the_current_schema_version() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let deals = repository(&store);

    // Through the repository, on a stream that already holds old rows.
    write_deal_history(&db.pool, &store, "deal-stamped").await;
    let id = stream("deal-stamped");
    deals
        .execute(&id, DealCommand::Retitle("Heat pump, phase 2".into()))
        .await
        .unwrap();
    deals
        .execute(
            &id,
            DealCommand::Configure {
                fields: fields(&[("heatPumpInstallationType", json!("monobloc"))]),
                source: "crm".into(),
            },
        )
        .await
        .unwrap();
    deals.execute(&id, DealCommand::Close).await.unwrap();
    assert_eq!(
        stored_types(&db.pool, id.as_str()).await[4..],
        [
            ("Titled".to_string(), 2),
            ("Configured".to_string(), 3),
            ("Closed".to_string(), 1),
        ]
    );

    // Through the store, with EventData::from_event.
    let other = stream("deal-direct");
    store
        .append(
            &other,
            ExpectedVersion::NoStream,
            vec![
                EventData::from_event(
                    &DealEvent::Titled {
                        title: "Direct".into(),
                    },
                    Metadata::default(),
                )
                .unwrap(),
                EventData::from_event(&DealEvent::Closed, Metadata::default()).unwrap(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        stored_types(&db.pool, other.as_str()).await,
        vec![("Titled".into(), 2), ("Closed".into(), 1)]
    );

    // And the stored payload is the current shape.
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM es_events WHERE stream_id = $1 AND stream_version = 6",
    )
    .bind(id.as_str())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        payload,
        json!({ "fields": { "heatPumpInstallationType": "monobloc" }, "source": "crm" })
    );
}
