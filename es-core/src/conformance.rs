//! The store conformance suite: every [`EventStore`] implementation runs it against itself.
//!
//! ```text
//! es_core::conformance::run_all(|| async { my_fresh_store().await }).await;
//! ```
//!
//! Each check gets a fresh, empty store from the factory and panics with a message naming the
//! broken guarantee.

use std::future::Future;
use std::sync::Arc;

use serde_json::json;

use crate::error::StoreError;
use crate::event::{EventData, FoldEvent, Metadata, RecordedEvent};
use crate::store::EventStore;
use crate::stream::{ExpectedVersion, GlobalPosition, StreamId, StreamVersion};

fn stream(name: &str) -> StreamId {
    StreamId::new(name).expect("valid test stream id")
}

fn events(n: usize, tag: &str) -> Vec<EventData> {
    (0..n)
        .map(|i| EventData::raw("Happened", 1, json!({ "tag": tag, "i": i })))
        .collect()
}

/// Runs every check, each on a fresh store.
pub async fn run_all<S, F, Fut>(factory: F)
where
    S: EventStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    append_and_read_back(factory().await).await;
    expected_versions_are_enforced(factory().await).await;
    read_stream_ranges(factory().await).await;
    read_all_in_position_order(factory().await).await;
    bad_input_writes_nothing(factory().await).await;
    concurrent_appends_have_one_winner(Arc::new(factory().await), 32).await;
    concurrent_writers_on_distinct_streams(Arc::new(factory().await), 8, 200).await;
}

/// Appended events read back exactly, with versions 1..n and growing positions.
pub async fn append_and_read_back<S: EventStore>(store: S) {
    let s = stream("conformance-read-back");
    let mut batch = events(3, "a");
    batch[1].metadata = Metadata {
        actor: Some("ann".into()),
        correlation_id: Some(uuid::Uuid::new_v4()),
        ..Metadata::default()
    };
    batch[1]
        .metadata
        .headers
        .insert("tenant".into(), json!("t1"));
    let result = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("append to a new stream");
    assert_eq!(result.stream_version, StreamVersion(3));
    let read = store
        .read_stream(&s, StreamVersion::INITIAL, None)
        .await
        .expect("read stream");
    assert_eq!(read.len(), 3);
    for (i, (written, stored)) in batch.iter().zip(&read).enumerate() {
        assert_eq!(stored.stream_id, s);
        assert_eq!(stored.stream_version, StreamVersion(i as u64 + 1));
        assert_eq!(stored.event_id, written.event_id);
        assert_eq!(stored.event_type, written.event_type);
        assert_eq!(stored.schema_version, written.schema_version);
        assert_eq!(stored.payload, written.payload);
        assert_eq!(stored.metadata, written.metadata);
    }
    assert!(read
        .windows(2)
        .all(|w| w[0].global_position < w[1].global_position));
    assert_eq!(read[2].global_position, result.global_position);
    assert_eq!(
        store.stream_version(&s).await.expect("stream version"),
        Some(StreamVersion(3))
    );
    assert_eq!(
        store
            .stream_version(&stream("missing"))
            .await
            .expect("stream version"),
        None
    );
    assert!(store
        .read_stream(&stream("missing"), StreamVersion::INITIAL, None)
        .await
        .expect("read missing")
        .is_empty());
}

/// Every ExpectedVersion is enforced, and a conflict writes nothing.
pub async fn expected_versions_are_enforced<S: EventStore>(store: S) {
    let s = stream("conformance-expected");
    let conflict = store
        .append(&s, ExpectedVersion::StreamExists, events(1, "x"))
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict { actual: None, .. })),
        "StreamExists on a missing stream must conflict, got {conflict:?}"
    );
    store
        .append(
            &s,
            ExpectedVersion::Exact(StreamVersion::INITIAL),
            events(2, "a"),
        )
        .await
        .expect("Exact(0) on a missing stream");
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(StreamVersion(1)),
        ExpectedVersion::Exact(StreamVersion(3)),
        ExpectedVersion::Exact(StreamVersion::INITIAL),
    ] {
        let result = store.append(&s, expected, events(2, "bad")).await;
        match result {
            Err(StoreError::Conflict {
                actual,
                expected: e,
                ..
            }) => {
                assert_eq!(
                    actual,
                    Some(StreamVersion(2)),
                    "conflict reports the actual version"
                );
                assert_eq!(e, expected);
            }
            other => panic!("{expected:?} on a stream at 2 must conflict, got {other:?}"),
        }
    }
    store
        .append(&s, ExpectedVersion::StreamExists, events(1, "b"))
        .await
        .expect("StreamExists");
    let last = store
        .append(&s, ExpectedVersion::Any, events(1, "c"))
        .await
        .expect("Any");
    assert_eq!(last.stream_version, StreamVersion(4));
    let read = store
        .read_stream(&s, StreamVersion::INITIAL, None)
        .await
        .expect("read");
    assert_eq!(read.len(), 4, "conflicting appends must write nothing");
    assert!(read.iter().all(|e| tag(e) != "bad"));
}

/// The `tag` field of a test event's payload.
fn tag(event: &RecordedEvent) -> serde_json::Value {
    let payload = event.payload.to_value().expect("stored payloads are JSON");
    payload["tag"].clone()
}

/// `after` is exclusive and `up_to` inclusive.
pub async fn read_stream_ranges<S: EventStore>(store: S) {
    let s = stream("conformance-ranges");
    store
        .append(&s, ExpectedVersion::NoStream, events(10, "r"))
        .await
        .expect("append");
    let versions = |events: Vec<crate::RecordedEvent>| {
        events
            .iter()
            .map(|e| e.stream_version.0)
            .collect::<Vec<_>>()
    };
    let middle = store
        .read_stream(&s, StreamVersion(3), Some(StreamVersion(6)))
        .await
        .expect("read");
    assert_eq!(versions(middle), vec![4, 5, 6]);
    let tail = store
        .read_stream(&s, StreamVersion(8), None)
        .await
        .expect("read");
    assert_eq!(versions(tail), vec![9, 10]);
    let past = store
        .read_stream(&s, StreamVersion(10), None)
        .await
        .expect("read");
    assert!(past.is_empty());
    // The read for folding gives the same events, range for range.
    for (after, up_to) in [(0, None), (3, Some(6)), (8, None), (10, None), (0, Some(0))] {
        let (after, up_to) = (StreamVersion(after), up_to.map(StreamVersion));
        let full = store.read_stream(&s, after, up_to).await.expect("read");
        let fold = store
            .read_stream_for_fold(&s, after, up_to)
            .await
            .expect("read for fold");
        let expected: Vec<FoldEvent> = full.into_iter().map(FoldEvent::from).collect();
        assert_eq!(fold, expected, "after {after:?}, up to {up_to:?}");
    }
}

/// The global log reads every event once, in position order, in batches.
pub async fn read_all_in_position_order<S: EventStore>(store: S) {
    for i in 0..5 {
        for name in ["a", "b", "c"] {
            let s = stream(&format!("conformance-all-{name}"));
            store
                .append(&s, ExpectedVersion::Any, events(2, &format!("{name}{i}")))
                .await
                .expect("append");
        }
    }
    let mut after = GlobalPosition::START;
    let mut seen = Vec::new();
    loop {
        let batch = store.read_all(after, 4).await.expect("read all");
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 4);
        after = batch[batch.len() - 1].global_position;
        seen.extend(batch);
    }
    assert_eq!(seen.len(), 30);
    assert!(seen
        .windows(2)
        .all(|w| w[0].global_position < w[1].global_position));
    for name in ["a", "b", "c"] {
        let versions: Vec<u64> = seen
            .iter()
            .filter(|e| e.stream_id.as_str().ends_with(name))
            .map(|e| e.stream_version.0)
            .collect();
        assert_eq!(versions, (1..=10).collect::<Vec<_>>());
    }
}

/// Empty appends, invalid type names and oversized events are typed errors, and a batch with
/// one bad event writes none of it.
pub async fn bad_input_writes_nothing<S: EventStore>(store: S) {
    let s = stream("conformance-bad-input");
    let empty = store.append(&s, ExpectedVersion::Any, Vec::new()).await;
    assert!(
        matches!(empty, Err(StoreError::EmptyAppend { .. })),
        "{empty:?}"
    );

    let mut batch = events(100, "batch");
    batch[42] = EventData::raw("Huge", 1, json!({ "blob": "x".repeat(2 * 1024 * 1024) }));
    let huge = store.append(&s, ExpectedVersion::Any, batch).await;
    assert!(
        matches!(huge, Err(StoreError::EventTooLarge { .. })),
        "{huge:?}"
    );

    let mut batch = events(100, "batch");
    batch[42].event_type = String::new();
    let unnamed = store.append(&s, ExpectedVersion::Any, batch).await;
    assert!(
        matches!(unnamed, Err(StoreError::InvalidEventType { .. })),
        "{unnamed:?}"
    );

    assert_eq!(store.stream_version(&s).await.expect("version"), None);
    assert!(store
        .read_all(GlobalPosition::START, 10)
        .await
        .expect("read all")
        .is_empty());
}

/// Of `tasks` concurrent appends with the same expected version, exactly one wins, and the
/// stream holds exactly the winner's events.
pub async fn concurrent_appends_have_one_winner<S: EventStore>(store: Arc<S>, tasks: usize) {
    let s = stream("conformance-race");
    store
        .append(&s, ExpectedVersion::NoStream, events(1, "seed"))
        .await
        .expect("seed");
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, s, barrier) = (store.clone(), s.clone(), barrier.clone());
            tokio::spawn(async move {
                let batch = events(3, &format!("task-{task}"));
                let ids: Vec<_> = batch.iter().map(|e| e.event_id).collect();
                barrier.wait().await;
                let result = store
                    .append(&s, ExpectedVersion::Exact(StreamVersion(1)), batch)
                    .await;
                (ids, result)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for handle in handles {
        let (ids, result) = handle.await.expect("task");
        match result {
            Ok(appended) => {
                assert_eq!(appended.stream_version, StreamVersion(4));
                winners.push(ids);
            }
            Err(StoreError::Conflict { .. }) => {}
            Err(other) => panic!("a losing append must be a Conflict, got {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of {tasks} racing appends wins"
    );
    let stored: Vec<_> = store
        .read_stream(&s, StreamVersion(1), None)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(
        stored, winners[0],
        "the stream holds exactly the winner's events"
    );
}

/// `writers` tasks each append `appends` times to their own stream: every event is stored once,
/// with contiguous versions.
pub async fn concurrent_writers_on_distinct_streams<S: EventStore>(
    store: Arc<S>,
    writers: usize,
    appends: usize,
) {
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = stream(&format!("conformance-writer-{w}"));
                for i in 0..appends {
                    let expected = ExpectedVersion::Exact(StreamVersion(i as u64));
                    store
                        .append(&s, expected, events(1, &format!("{w}-{i}")))
                        .await
                        .expect("append on a private stream");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("writer task");
    }
    let mut total = 0;
    let mut after = GlobalPosition::START;
    loop {
        let batch = store.read_all(after, 1000).await.expect("read all");
        let Some(last) = batch.last() else { break };
        after = last.global_position;
        total += batch.len();
    }
    assert_eq!(total, writers * appends, "every event stored exactly once");
    for w in 0..writers {
        let s = stream(&format!("conformance-writer-{w}"));
        let read = store
            .read_stream(&s, StreamVersion::INITIAL, None)
            .await
            .expect("read");
        let versions: Vec<u64> = read.iter().map(|e| e.stream_version.0).collect();
        assert_eq!(versions, (1..=appends as u64).collect::<Vec<_>>());
        let tags: Vec<String> = read.iter().map(|e| tag(e).to_string()).collect();
        let expected: Vec<String> = (0..appends)
            .map(|i| json!(format!("{w}-{i}")).to_string())
            .collect();
        assert_eq!(
            tags, expected,
            "each stream holds its writer's events in order"
        );
    }
}
