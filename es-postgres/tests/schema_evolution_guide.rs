//! The code of `docs/schema-evolution.md`, run against PostgreSQL. The guide's snippets are
//! excerpts of this file (`examples/tests/docs_snippets.rs` checks it), so they compile and work.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;

use es_core::{Aggregate, EventStore, StreamId, StreamVersion};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;

use std::collections::BTreeMap;

use es_core::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum DealEvent {
    /// v1 was called `DealNamed`, with `{"name": ...}`.
    Titled {
        title: String,
    },
    /// v1: `{"field": "gasConsumption", "value": 12000}` (one field);
    /// v2: `{"fields": {...}}`;
    /// v3: `{"fields": {...}, "source": "crm"}`.
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

/// Another aggregate's events in the same log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CustomerEvent {
    Registered { name: String },
}

impl DomainEvent for CustomerEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Registered", 1)];
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Deal {
    title: String,
    fields: BTreeMap<String, Value>,
    configurations: u64,
}

impl Aggregate for Deal {
    const TYPE: &'static str = "deal";
    // Raised from 1: `apply` now also counts configurations.
    const STATE_VERSION: u32 = 2;
    /// The guide's commands are the events to record.
    type Command = DealEvent;
    type Event = DealEvent;
    type Error = Infallible;

    fn handle(&self, command: DealEvent) -> Result<Vec<DealEvent>, Infallible> {
        Ok(vec![command])
    }

    fn apply(&mut self, event: &DealEvent) {
        match event {
            DealEvent::Titled { title } => self.title = title.clone(),
            DealEvent::Configured { fields, .. } => {
                self.fields.extend(fields.clone());
                self.configurations += 1;
            }
            DealEvent::Closed => {}
        }
    }
}

#[tokio::test]
async fn the_schema_evolution_guide_runs() -> Result<(), Box<dyn std::error::Error>> {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let id = StreamId::new("deal-guide")?;
    // What old deployments wrote: DealNamed v1, Configured v1 and v2.
    for (version, event_type, schema_version, payload) in [
        (
            1,
            "DealNamed",
            1,
            serde_json::json!({"name": "Heat pump for the Smiths"}),
        ),
        (
            2,
            "Configured",
            1,
            serde_json::json!({"field": "gasConsumption", "value": 12000}),
        ),
        (
            3,
            "Configured",
            2,
            serde_json::json!({"fields": {"roofArea": 40}}),
        ),
    ] {
        sqlx::query(
            "INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(id.as_str())
        .bind(version as i64)
        .bind(event_type)
        .bind(schema_version)
        .bind(payload)
        .execute(&db.pool)
        .await?;
    }

    use std::sync::Arc;

    use es_core::{Repository, Upcasters};
    use serde_json::json;

    let upcasters = Upcasters::builder()
        .register::<DealEvent>()
        // Register every enum whose events live in the same log (projectors read them all).
        .register::<CustomerEvent>()
        // A rename: DealNamed v1 becomes Titled v2.
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
        .build()?;
    let upcasters = Arc::new(upcasters);
    let deals = Repository::<Deal>::new(store.clone()).with_upcasters(upcasters.clone());

    let loaded = deals.load(&id).await?;
    assert_eq!(loaded.state.title, "Heat pump for the Smiths");
    assert_eq!(loaded.state.fields["gasConsumption"], json!(12000));
    for i in 0..247 {
        let mut fields = BTreeMap::new();
        fields.insert("step".to_string(), json!(i));
        let source = "crm".to_string();
        deals
            .execute(&id, DealEvent::Configured { fields, source })
            .await?;
    }

    for recorded in store.read_stream(&id, StreamVersion::INITIAL, None).await? {
        // Ok(None): a registered type that DealEvent does not define (a projector skips it).
        if let Some(envelope) = upcasters.decode::<DealEvent>(recorded)? {
            println!(
                "{} v{}: {:?}",
                envelope.stream_id, envelope.stream_version, envelope.event
            );
        }
    }
    assert_eq!(
        store
            .read_stream(&id, StreamVersion::INITIAL, None)
            .await?
            .len(),
        250
    );

    use es_core::{SnapshotPolicy, SnapshotWrite};

    let deals = Repository::<Deal>::new(store.clone())
        .with_upcasters(upcasters.clone())
        .with_snapshots(
            Arc::new(store.clone()),
            SnapshotPolicy::EveryNEvents(100),
            SnapshotWrite::Background,
        );
    // Crossing version 300 writes a snapshot in the background.
    for i in 0..60 {
        let mut fields = BTreeMap::new();
        fields.insert("late".to_string(), json!(i));
        let source = "crm".to_string();
        deals
            .execute(&id, DealEvent::Configured { fields, source })
            .await?;
    }
    let mut snapshot = None;
    for _ in 0..200 {
        snapshot = es_core::SnapshotStore::load_snapshot(&store, &id, "deal").await?;
        if snapshot.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(snapshot.map(|s| s.stream_version), Some(StreamVersion(300)));

    let loaded = deals.load(&id).await?;
    // Where the load started and how much it read:
    println!(
        "at {} from snapshot {:?}, {} events replayed",
        loaded.version, loaded.snapshot_version, loaded.events_replayed
    );
    assert_eq!(loaded.snapshot_version, Some(StreamVersion(300)));
    assert_eq!(loaded.events_replayed, 10);
    assert_eq!(loaded.state.configurations, 309);

    // As it was after its first 120 events (a shorter stream loads its latest state).
    let then = deals.load_at_version(&id, StreamVersion(120)).await?;
    println!(
        "at version {}: {} events replayed",
        then.version, then.events_replayed
    );

    // Every event recorded at or before a point in time.
    let at: chrono::DateTime<chrono::Utc> = "2024-03-01T00:00:00Z".parse()?;
    let then = deals.load_as_of(&id, at).await?;
    println!("as of {at}: version {}", then.version);

    assert_eq!(
        then.version,
        StreamVersion::INITIAL,
        "nothing was recorded in 2024"
    );
    let at_120 = deals.load_at_version(&id, StreamVersion(120)).await?;
    assert_eq!(
        (at_120.version, at_120.events_replayed),
        (StreamVersion(120), 120)
    );
    Ok(())
}
