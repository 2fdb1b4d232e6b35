//! PgEventStore against a real PostgreSQL, a fresh database per test.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{event, stream};
use es_core::{
    conformance, EventData, EventStore, ExpectedVersion, GlobalPosition, StoreError, StreamVersion,
};
use es_postgres::testing::TestDatabase;
use es_postgres::{PgEventStore, NOTIFY_CHANNEL};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_conforms() {
    common::conforms(PgEventStore::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_a_thousand_appends_each() {
    let db = TestDatabase::with_max_connections(16).await;
    let store = Arc::new(PgEventStore::new(db.pool.clone()));
    conformance::concurrent_writers_on_distinct_streams(store, 8, 1000).await;
    let (count, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (stream_id, stream_version)) FROM es_events",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((count, distinct), (8000, 8000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_racing_appends_one_winner() {
    let db = TestDatabase::with_max_connections(40).await;
    let store = Arc::new(PgEventStore::new(db.pool.clone()));
    // Repeat: one lucky interleaving proves little.
    for round in 0..5 {
        let s = stream(&format!("race-{round}"));
        store
            .append(&s, ExpectedVersion::NoStream, vec![event(0)])
            .await
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(32));
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let (store, s, barrier) = (store.clone(), s.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .append(
                            &s,
                            ExpectedVersion::Exact(StreamVersion(1)),
                            vec![event(t), event(t)],
                        )
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => wins += 1,
                Err(StoreError::Conflict { actual, .. }) => {
                    assert!(actual >= Some(StreamVersion(1)));
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(wins, 1);
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events WHERE stream_id = $1")
            .bind(s.as_str())
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(rows, 3, "seed plus the winner's two events");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_any_appends_all_succeed_with_contiguous_versions() {
    let db = TestDatabase::with_max_connections(20).await;
    let store = Arc::new(PgEventStore::new(db.pool.clone()));
    let s = stream("any-race");
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (store, s) = (store.clone(), s.clone());
            tokio::spawn(async move {
                for i in 0..10 {
                    store
                        .append(&s, ExpectedVersion::Any, vec![event(t * 100 + i)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let events = store
        .read_stream(&s, StreamVersion::INITIAL, None)
        .await
        .unwrap();
    let versions: Vec<u64> = events.iter().map(|e| e.stream_version.0).collect();
    assert_eq!(versions, (1..=160).collect::<Vec<_>>());
    assert!(events
        .windows(2)
        .all(|w| w[0].global_position < w[1].global_position));
}

#[tokio::test]
async fn events_cannot_be_updated_deleted_or_truncated() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    store
        .append(
            &stream("immutable"),
            ExpectedVersion::NoStream,
            vec![event(1)],
        )
        .await
        .unwrap();
    for statement in [
        "UPDATE es_events SET payload = '{}'",
        "DELETE FROM es_events",
        "TRUNCATE es_events",
    ] {
        let error = sqlx::query(statement).execute(&db.pool).await.unwrap_err();
        assert!(
            error.to_string().contains("append-only"),
            "{statement} must fail: {error}"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn only_our_constraint_is_a_conflict() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let first = event(1);
    store
        .append(&stream("a"), ExpectedVersion::NoStream, vec![first.clone()])
        .await
        .unwrap();
    // The same event id again, on another stream: a unique violation, but not a version race.
    let duplicate = store
        .append(
            &stream("b"),
            ExpectedVersion::NoStream,
            vec![event(2), first.clone()],
        )
        .await;
    match duplicate {
        Err(StoreError::DuplicateEventId { event_id }) => assert_eq!(event_id, first.event_id),
        other => panic!("a duplicate event id must be DuplicateEventId, got {other:?}"),
    }
    assert_eq!(store.stream_version(&stream("b")).await.unwrap(), None);
}

#[tokio::test]
async fn invalid_batches_write_nothing_at_all() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone()).with_limits(es_core::StoreLimits {
        max_event_bytes: 1000,
    });
    let s = stream("limits");
    let mut batch: Vec<_> = (0..100).map(event).collect();
    batch[42] = EventData::raw("Big", 1, json!({ "blob": "x".repeat(1000) }));
    let result = store.append(&s, ExpectedVersion::NoStream, batch).await;
    assert!(
        matches!(&result, Err(StoreError::EventTooLarge { size, limit: 1000, .. }) if *size > 1000),
        "{result:?}"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    // The sequence did not move either: the check happens before the database is asked.
    let appended = store
        .append(&s, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .unwrap();
    assert_eq!(appended.global_position, GlobalPosition(1));
}

#[tokio::test]
async fn appends_wake_listeners() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen(NOTIFY_CHANNEL).await.unwrap();
    store
        .append(&stream("wake"), ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    let notification = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .unwrap();
    assert_eq!(notification.channel(), NOTIFY_CHANNEL);
}

#[tokio::test]
async fn the_writing_transaction_is_recorded_before_the_position() {
    // The gap-aware reader's premise: within one append, all rows carry the same transaction id,
    // and every row of a later-started transaction that took a higher position has an id that
    // was assigned before its position was taken. We check the visible part: one id per append.
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    for i in 0..5 {
        store
            .append(
                &stream(&format!("x{i}")),
                ExpectedVersion::NoStream,
                (0..3).map(event).collect(),
            )
            .await
            .unwrap();
    }
    let per_append: Vec<i64> = sqlx::query_scalar(
        "SELECT count(DISTINCT transaction_id)::bigint FROM es_events GROUP BY stream_id ORDER BY stream_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(per_append, vec![1; 5]);
}

#[tokio::test]
async fn the_transaction_id_column_precedes_the_position_column() {
    // The gap-aware reader's premise rests on this order: PostgreSQL evaluates column defaults
    // in column order, so pg_current_xact_id() assigns the writer's transaction id before the
    // identity default takes a position. A migration that reorders them breaks the proof.
    let db = TestDatabase::create().await;
    let order: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT attname::text, pg_get_expr(d.adbin, d.adrelid)
         FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = 'es_events'::regclass AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attname IN ('transaction_id', 'global_position')
         ORDER BY a.attnum",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(order[0].0, "transaction_id");
    assert_eq!(order[0].1.as_deref(), Some("pg_current_xact_id()"));
    assert_eq!(order[1].0, "global_position");
}

#[tokio::test]
async fn metadata_written_by_another_tool_is_read_back_whole() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let s = stream("imported-1");
    // Rows another tool wrote with plain SQL (the table only insists on an object): keys our
    // Metadata does not name, a field of the wrong type, and the empty object most rows carry.
    for (version, metadata) in [
        (1, json!({"tenant": "t1", "actor": "importer"})),
        (2, json!({"actor": 7})),
        (3, json!({})),
        (4, json!({"actor": "ann", "headers": {"trace": "x"}})),
    ] {
        sqlx::query(
            "INSERT INTO es_events (event_id, stream_id, stream_version, event_type,
                 schema_version, payload, metadata)
             VALUES (gen_random_uuid(), $1, $2, 'Imported', 1, '{}', $3)",
        )
        .bind(s.as_str())
        .bind(version)
        .bind(&metadata)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let read = store.read_stream(&s, StreamVersion(0), None).await.unwrap();
    let headers: Vec<_> = read.iter().map(|e| json!(e.metadata.headers)).collect();
    assert_eq!(
        headers,
        vec![
            json!({"tenant": "t1", "actor": "importer"}),
            json!({"actor": 7}),
            json!({}),
            json!({"trace": "x"}),
        ]
    );
    assert_eq!(read[3].metadata.actor.as_deref(), Some("ann"));
    assert_eq!(read[0].metadata.actor, None);
}

/// The premise of `StoreError::NulCharacter`: PostgreSQL's jsonb refuses a NUL character in a
/// string or a key ("unsupported Unicode escape sequence", SQLSTATE 22P05). The store refuses
/// it first, naming the event, and writes nothing; the JSON text `\\u0000` (an escaped
/// backslash) is no NUL and is stored.
#[tokio::test]
async fn a_nul_character_is_refused_before_postgresql_would() {
    let db = TestDatabase::create().await;
    for text in [r#"{"a": "x\u0000"}"#, r#"{"a\u0000": 1}"#] {
        let refused = sqlx::query("SELECT $1::text::jsonb")
            .bind(text)
            .execute(&db.pool)
            .await
            .unwrap_err();
        let code = refused.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("22P05"), "{text}: {refused}");
    }
    let store = PgEventStore::new(db.pool.clone());
    let s = stream("nul-1");
    let events = vec![
        event(0),
        EventData::raw("Noted", 1, json!({"note": {"text": "a\u{0}b"}})),
    ];
    let refused = store
        .append(&s, ExpectedVersion::NoStream, events)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::NulCharacter { index: 1, part: "payload", pointer, .. } if pointer == "/note/text"),
        "{refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        "event Noted (number 2 of the append to stream nul-1) holds a NUL character (\\u0000) \
         in the string or key at /note/text of its payload: PostgreSQL's jsonb cannot store it; \
         remove it, or encode binary data (base64). Nothing was written"
    );
    assert_eq!(store.stream_version(&s).await.unwrap(), None);
    let stored = store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![EventData::raw("Noted", 1, json!({"text": "\\u0000"}))],
        )
        .await
        .unwrap();
    let back = store.read_stream(&s, StreamVersion(0), None).await.unwrap();
    assert_eq!(back[0].payload, json!({"text": "\\u0000"}));
    assert_eq!(stored.stream_version, StreamVersion(1));
}

/// A stream id with a bidirectional override, stored before `StreamId::new` refused such ids
/// (here by plain SQL), still reads back, by stream and in the log: refusing it on read would
/// stop every reader at it. A new append under such an id is refused at the id.
#[tokio::test]
async fn a_stream_id_stored_before_the_check_still_reads() {
    let db = TestDatabase::create().await;
    let store = PgEventStore::new(db.pool.clone());
    let id = "account-\u{202e}1-tnuocca";
    sqlx::query(
        "INSERT INTO es_events (event_id, stream_id, stream_version, event_type,
             schema_version, payload)
         VALUES (gen_random_uuid(), $1, 1, 'Imported', 1, '{}')",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let stored = es_core::StreamId::from_stored(id).unwrap();
    let read = store
        .read_stream(&stored, StreamVersion(0), None)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    let all = store.read_all(GlobalPosition::START, 10).await.unwrap();
    assert_eq!(all[0].stream_id.as_str(), id);
    assert!(matches!(
        es_core::StreamId::new(id),
        Err(es_core::InvalidStreamId::InvisibleCharacter {
            character: '\u{202e}',
            ..
        })
    ));
}
