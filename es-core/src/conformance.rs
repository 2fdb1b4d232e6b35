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

use crate::commit::{Commit, IdempotencyKey, StreamAppend, UniqueChange};
use crate::error::StoreError;
use crate::event::{EventData, FoldEvent, Metadata, RecordedEvent};
use crate::snapshot::{Snapshot, SnapshotStore};
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
    S: EventStore + SnapshotStore,
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
    commits_are_all_or_nothing(factory().await).await;
    duplicate_event_ids_are_refused(factory().await).await;
    idempotent_commits_replay(Arc::new(factory().await), 16).await;
    unique_values_have_one_holder(Arc::new(factory().await), 32).await;
    stream_exists_never_conflicts_on_an_existing_stream(Arc::new(factory().await), 16).await;
    stored_event_types_are_listed(factory().await).await;
    snapshots_keep_the_newest(factory().await).await;
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

/// Empty appends, invalid type names, oversized events and NUL characters in a payload or
/// metadata (PostgreSQL's jsonb cannot store them) are typed errors, and a batch or commit with
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

    // PostgreSQL's jsonb cannot store a NUL character: refused, by every store, naming the
    // event and the place, in the payload (a value or a key) or in the metadata.
    let mut batch = events(100, "batch");
    batch[42] = EventData::raw("Noted", 1, json!({ "notes": ["fine", "bad\u{0}byte"] }));
    let nul = store.append(&s, ExpectedVersion::Any, batch).await;
    match &nul {
        Err(
            error @ StoreError::NulCharacter {
                stream,
                index: 42,
                event_type,
                part: "payload",
                pointer,
            },
        ) if *stream == s && event_type == "Noted" && pointer == "/notes/1" => {
            let message = error.to_string();
            assert!(
                message.contains("NUL character") && message.contains("jsonb"),
                "{message}"
            );
        }
        other => panic!("a NUL in a payload string: {other:?}"),
    }
    let mut batch = events(3, "batch");
    batch[0].payload = json!({ "key\u{0}": 1 });
    let key = store.append(&s, ExpectedVersion::Any, batch).await;
    assert!(
        matches!(&key, Err(StoreError::NulCharacter { index: 0, pointer, .. }) if pointer == "/key\u{0}"),
        "{key:?}"
    );
    let mut batch = events(3, "batch");
    batch[2].metadata.actor = Some("operator\u{0}".into());
    let metadata = store
        .commit(
            Commit::new()
                .with(StreamAppend::new(
                    stream("conformance-bad-input-2"),
                    ExpectedVersion::Any,
                    events(2, "ok"),
                ))
                .with(StreamAppend::new(s.clone(), ExpectedVersion::Any, batch)),
        )
        .await;
    assert!(
        matches!(&metadata, Err(StoreError::NulCharacter { index: 2, part: "metadata", pointer, .. }) if pointer == "/actor"),
        "{metadata:?}"
    );
    let fine = store
        .append(
            &stream("conformance-bad-input-3"),
            ExpectedVersion::NoStream,
            vec![EventData::raw(
                "Noted",
                1,
                json!({ "escaped": "\\u0000", "nul": "NUL" }),
            )],
        )
        .await;
    assert!(
        fine.is_ok(),
        "the text \\u0000 is no NUL character: {fine:?}"
    );
    let fine = fine.map(|f| f.global_position).unwrap_or_default();

    assert_eq!(store.stream_version(&s).await.expect("version"), None);
    assert_eq!(
        store
            .stream_version(&stream("conformance-bad-input-2"))
            .await
            .expect("version"),
        None
    );
    let all = store
        .read_all(GlobalPosition::START, 10)
        .await
        .expect("read all");
    assert_eq!(
        all.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        vec![fine]
    );
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

fn part(name: &str, expected: ExpectedVersion, events: Vec<EventData>) -> StreamAppend {
    StreamAppend::new(stream(name), expected, events)
}

/// A commit over several streams writes all of them or none, and a conflict names the stream
/// whose expected version did not hold.
pub async fn commits_are_all_or_nothing<S: EventStore>(store: S) {
    store
        .append(
            &stream("commit-a"),
            ExpectedVersion::NoStream,
            events(1, "seed"),
        )
        .await
        .expect("seed a");
    let wrong = Commit::new()
        .with(part(
            "commit-a",
            ExpectedVersion::Exact(StreamVersion(1)),
            events(2, "bad"),
        ))
        .with(part(
            "commit-b",
            ExpectedVersion::Exact(StreamVersion(5)),
            events(1, "bad"),
        ));
    match store.commit(wrong).await {
        Err(StoreError::Conflict {
            stream: s,
            expected,
            actual,
        }) => {
            assert_eq!(
                s,
                stream("commit-b"),
                "the conflict names the stream that did not hold"
            );
            assert_eq!(expected, ExpectedVersion::Exact(StreamVersion(5)));
            assert_eq!(actual, None);
        }
        other => panic!("a commit with one wrong version must conflict, got {other:?}"),
    }
    assert_eq!(
        store
            .stream_version(&stream("commit-a"))
            .await
            .expect("version"),
        Some(StreamVersion(1)),
        "a failed commit writes none of its streams"
    );
    let right = Commit::new()
        .with(part("commit-b", ExpectedVersion::NoStream, events(1, "ok")))
        .with(part(
            "commit-a",
            ExpectedVersion::Exact(StreamVersion(1)),
            events(2, "ok"),
        ));
    let committed = store
        .commit(right)
        .await
        .expect("a commit whose versions hold");
    assert!(!committed.replayed);
    let outcome: Vec<(String, u64, u64)> = committed
        .streams
        .iter()
        .map(|s| (s.stream.to_string(), s.events, s.stream_version.0))
        .collect();
    assert_eq!(
        outcome,
        vec![("commit-b".into(), 1, 1), ("commit-a".into(), 2, 3)],
        "outcomes in the order of the commit's parts"
    );
    let all = store
        .read_all(GlobalPosition::START, 100)
        .await
        .expect("read all");
    assert_eq!(all.len(), 4);
    assert_eq!(committed.global_position(), all[3].global_position);
    for written in &committed.streams {
        let read = store
            .read_stream(&written.stream, written.previous_version(), None)
            .await
            .expect("read");
        assert_eq!(read.len() as u64, written.events);
        assert_eq!(
            read.last().map(|e| e.global_position),
            Some(written.global_position)
        );
    }
    let empty = store.commit(Commit::new()).await;
    assert!(
        matches!(empty, Err(StoreError::InvalidCommit { .. })),
        "{empty:?}"
    );
}

/// An event id is stored once: appending it again, alone or in a commit, is a typed error
/// that writes nothing.
pub async fn duplicate_event_ids_are_refused<S: EventStore>(store: S) {
    let first = events(1, "first");
    store
        .append(&stream("dup-a"), ExpectedVersion::NoStream, first.clone())
        .await
        .expect("first append");
    let again = store
        .append(&stream("dup-b"), ExpectedVersion::NoStream, first.clone())
        .await;
    assert!(
        matches!(&again, Err(StoreError::DuplicateEventId { event_id }) if *event_id == first[0].event_id),
        "{again:?}"
    );
    let mut mixed = events(2, "mixed");
    mixed.push(first[0].clone());
    let in_commit = store
        .commit(
            Commit::new()
                .with(part("dup-c", ExpectedVersion::NoStream, events(1, "c")))
                .with(part(
                    "dup-a",
                    ExpectedVersion::Exact(StreamVersion(1)),
                    mixed,
                )),
        )
        .await;
    assert!(
        matches!(in_commit, Err(StoreError::DuplicateEventId { .. })),
        "{in_commit:?}"
    );
    let all = store
        .read_all(GlobalPosition::START, 100)
        .await
        .expect("read all");
    assert_eq!(all.len(), 1, "a refused duplicate writes nothing");
}

/// A commit whose idempotency key is stored writes nothing and returns the first outcome,
/// even when `tasks` executions race; the same key for another request is a typed error.
pub async fn idempotent_commits_replay<S: EventStore>(store: Arc<S>, tasks: usize) {
    let key = IdempotencyKey::for_request("order-7/pay", &json!({ "pay": 10 })).expect("key");
    let commit = |tag: &str| {
        Commit::new()
            .with(part("idem-a", ExpectedVersion::Any, events(1, tag)))
            .with(part("idem-b", ExpectedVersion::Any, events(2, tag)))
            .idempotent(key.clone())
    };
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, barrier, commit) =
                (store.clone(), barrier.clone(), commit(&format!("t{task}")));
            tokio::spawn(async move {
                barrier.wait().await;
                store.commit(commit).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(
            handle
                .await
                .expect("task")
                .expect("an idempotent commit succeeds"),
        );
    }
    assert_eq!(
        outcomes.iter().filter(|o| !o.replayed).count(),
        1,
        "exactly one of {tasks} racing executions writes"
    );
    assert!(
        outcomes.windows(2).all(|w| w[0].streams == w[1].streams),
        "every execution returns the first outcome"
    );
    let all = store
        .read_all(GlobalPosition::START, 100)
        .await
        .expect("read all");
    assert_eq!(all.len(), 3, "one set of events");
    let later = store.commit(commit("later")).await.expect("a later repeat");
    assert!(later.replayed);
    assert_eq!(later.streams, outcomes[0].streams);
    assert_eq!(
        store
            .idempotent_outcome(&key)
            .await
            .expect("lookup")
            .map(|o| o.streams),
        Some(outcomes[0].streams.clone())
    );
    let other = IdempotencyKey::for_request("order-7/pay", &json!({ "pay": 11 })).expect("key");
    let reused = store
        .commit(
            Commit::single(stream("idem-a"), ExpectedVersion::Any, events(1, "x"))
                .idempotent(other.clone()),
        )
        .await;
    assert!(
        matches!(&reused, Err(StoreError::IdempotencyKeyReused { key }) if key == "order-7/pay"),
        "{reused:?}"
    );
    assert!(matches!(
        store.idempotent_outcome(&other).await,
        Err(StoreError::IdempotencyKeyReused { .. })
    ));
    let all = store
        .read_all(GlobalPosition::START, 100)
        .await
        .expect("read all");
    assert_eq!(all.len(), 3, "replays and refusals write nothing");
}

/// Of `tasks` streams claiming one value at once, one holds it; the others are refused,
/// naming it, and write nothing. Released, the value can be claimed again.
pub async fn unique_values_have_one_holder<S: EventStore>(store: Arc<S>, tasks: usize) {
    let claim = || UniqueChange::claim("user-email", "ann@example.com");
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let commit = Commit::new().with(
                part(
                    &format!("user-{task}"),
                    ExpectedVersion::NoStream,
                    events(1, "registered"),
                )
                .with_uniques([claim()]),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                (task, store.commit(commit).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for handle in handles {
        match handle.await.expect("task") {
            (task, Ok(_)) => winners.push(stream(&format!("user-{task}"))),
            (_, Err(StoreError::UniqueValueTaken { scope, value, .. })) => {
                assert_eq!(
                    (scope.as_str(), value.as_str()),
                    ("user-email", "ann@example.com")
                );
            }
            (_, Err(other)) => panic!("a losing claim must be UniqueValueTaken, got {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one of {tasks} claims wins");
    let holder = winners[0].clone();
    let all = store
        .read_all(GlobalPosition::START, 100)
        .await
        .expect("read all");
    assert_eq!(all.len(), 1, "refused claims write nothing");
    assert_eq!(
        store
            .unique_holder("user-email", "ann@example.com")
            .await
            .expect("holder"),
        Some(holder.clone())
    );
    let other = if holder == stream("user-0") {
        "user-1"
    } else {
        "user-0"
    };
    let taken =
        store
            .commit(Commit::new().with(
                part(other, ExpectedVersion::Any, events(1, "again")).with_uniques([claim()]),
            ))
            .await;
    assert!(
        matches!(&taken, Err(StoreError::UniqueValueTaken { holder: h, .. }) if *h == holder),
        "{taken:?}"
    );
    // The holder claiming it again is a no-op; a release by another stream is too.
    store
        .commit(
            Commit::new().with(
                StreamAppend::new(holder.clone(), ExpectedVersion::Any, events(1, "again"))
                    .with_uniques([claim()]),
            ),
        )
        .await
        .expect("the holder claims again");
    store
        .commit(
            Commit::new().with(
                part(other, ExpectedVersion::Any, events(1, "not mine"))
                    .with_uniques([UniqueChange::release("user-email", "ann@example.com")]),
            ),
        )
        .await
        .expect("releasing a value held by another stream is a no-op");
    assert_eq!(
        store
            .unique_holder("user-email", "ann@example.com")
            .await
            .expect("holder"),
        Some(holder.clone())
    );
    store
        .commit(
            Commit::new().with(
                StreamAppend::new(holder.clone(), ExpectedVersion::Any, events(1, "changed"))
                    .with_uniques([UniqueChange::release("user-email", "ann@example.com")]),
            ),
        )
        .await
        .expect("release");
    assert_eq!(
        store
            .unique_holder("user-email", "ann@example.com")
            .await
            .expect("holder"),
        None
    );
    store
        .commit(
            Commit::new().with(
                part(other, ExpectedVersion::Any, events(1, "claimed")).with_uniques([claim()]),
            ),
        )
        .await
        .expect("a released value can be claimed again");
    assert_eq!(
        store
            .unique_holder("user-email", "ann@example.com")
            .await
            .expect("holder"),
        Some(stream(other))
    );
    // Both refusals at once: the versions are checked before the claims, in every store.
    let both = store
        .commit(
            Commit::new()
                .with(
                    part("aaa-claimer", ExpectedVersion::Any, events(1, "x"))
                        .with_uniques([claim()]),
                )
                .with(part(
                    "zzz-stale",
                    ExpectedVersion::Exact(StreamVersion(9)),
                    events(1, "x"),
                )),
        )
        .await;
    assert!(
        matches!(&both, Err(StoreError::Conflict { stream: s, .. }) if *s == stream("zzz-stale")),
        "{both:?}"
    );
}

/// `StreamExists` on a stream that exists never conflicts, however many writers race.
pub async fn stream_exists_never_conflicts_on_an_existing_stream<S: EventStore>(
    store: Arc<S>,
    tasks: usize,
) {
    let s = stream("exists-race");
    store
        .append(&s, ExpectedVersion::NoStream, events(1, "seed"))
        .await
        .expect("seed");
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, s, barrier) = (store.clone(), s.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append(
                        &s,
                        ExpectedVersion::StreamExists,
                        events(1, &format!("t{task}")),
                    )
                    .await
            })
        })
        .collect();
    for handle in handles {
        let result = handle.await.expect("task");
        assert!(
            result.is_ok(),
            "StreamExists on an existing stream must not fail: {result:?}"
        );
    }
    assert_eq!(
        store.stream_version(&s).await.expect("version"),
        Some(StreamVersion(tasks as u64 + 1))
    );
}

/// Every (event type, schema version) appended is listed once.
pub async fn stored_event_types_are_listed<S: EventStore>(store: S) {
    let mut batch = events(2, "a");
    batch.push(EventData::raw("Renamed", 3, json!({})));
    store
        .append(&stream("types-a"), ExpectedVersion::NoStream, batch)
        .await
        .expect("append");
    store
        .commit(Commit::single(
            stream("types-b"),
            ExpectedVersion::NoStream,
            vec![EventData::raw("Happened", 2, json!({}))],
        ))
        .await
        .expect("commit");
    let mut stored = store.stored_event_types().await.expect("stored types");
    stored.sort();
    assert_eq!(
        stored,
        vec![
            ("Happened".into(), 1),
            ("Happened".into(), 2),
            ("Renamed".into(), 3)
        ]
    );
}

/// Only the newest snapshot of a stream is kept: a newer state version wins, then a higher
/// stream version; a write from older code (a lower state version, as during a rolling
/// deployment or a rollback) or of an older version never replaces it.
pub async fn snapshots_keep_the_newest<S: SnapshotStore>(store: S) {
    let s = stream("conformance-snapshots");
    let snapshot = |version: u64, state_version: u32| Snapshot {
        stream_id: s.clone(),
        aggregate_type: "Thing".into(),
        stream_version: StreamVersion(version),
        state_version,
        state: json!({ "at": version, "v": state_version }),
        taken_at: chrono::Utc::now(),
    };
    let kept = || async {
        let found = store
            .load_snapshot(&s, "Thing")
            .await
            .expect("load a snapshot")
            .expect("a snapshot is kept");
        (found.stream_version.0, found.state_version, found.state)
    };
    store.save_snapshot(snapshot(10, 2)).await.expect("save");
    assert_eq!(kept().await, (10, 2, json!({ "at": 10, "v": 2 })));
    store.save_snapshot(snapshot(20, 2)).await.expect("save");
    assert_eq!(kept().await.0, 20, "a higher stream version replaces");
    store.save_snapshot(snapshot(15, 2)).await.expect("save");
    assert_eq!(kept().await.0, 20, "a lower stream version does not");
    store.save_snapshot(snapshot(30, 1)).await.expect("save");
    assert_eq!(
        kept().await,
        (20, 2, json!({ "at": 20, "v": 2 })),
        "older code's snapshot never replaces a newer state version"
    );
    store.save_snapshot(snapshot(5, 3)).await.expect("save");
    assert_eq!(
        kept().await.1,
        3,
        "a newer state version replaces, even at a lower stream version"
    );
    let mut bad = snapshot(40, 3);
    bad.state = json!({ "name": "a\u{0}b" });
    assert!(
        matches!(store.save_snapshot(bad).await, Err(StoreError::NulInSnapshot { pointer, .. }) if pointer == "/name"),
        "a NUL in the state is refused, typed"
    );
    assert_eq!(kept().await.0, 5, "and the previous snapshot is kept");
    assert_eq!(
        store
            .load_snapshot(&s, "Other")
            .await
            .expect("load a snapshot"),
        None,
        "snapshots are per aggregate type"
    );
}
