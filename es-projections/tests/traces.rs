//! Traces: each command runs in a `command` span (aggregate, stream, expected version, attempt)
//! and each batch in a `batch` span (projection, generation, positions, count).
//!
//! In a test binary of its own, because its subscriber is the test thread's default
//! (`set_default`): tracing caches each callsite's interest process-wide when the callsite is
//! first hit, and while exactly one dispatcher is registered it asks the *hitting thread's*
//! default (tracing-core `callsite.rs`, `Dispatchers::rebuilder` returning `Rebuilder::JustOne`).
//! A sibling test's worker thread, with no subscriber, that reaches the `batch` callsite first
//! caches `Interest::never`, and this test then sees no batch span: what happened when it shared
//! a binary with the observer's tests.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use es_core::{StreamId, Upcasters};
use es_postgres::testing::TestDatabase;
use es_postgres::PgEventStore;
use es_projections::Worker;

/// The spans opened on this thread: name and fields (recorded at creation and later).
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(u64, String, String)>>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!("{}={value} ", field.name()));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = String::new();
        attrs.record(&mut Fields(&mut fields));
        let name = attrs.metadata().name().to_string();
        self.0.lock().unwrap().push((id.into_u64(), name, fields));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut spans = self.0.lock().unwrap();
        if let Some(span) = spans.iter_mut().rev().find(|s| s.0 == id.into_u64()) {
            values.record(&mut Fields(&mut span.2));
        }
    }
}

impl Spans {
    fn named(&self, name: &str) -> Vec<String> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.1 == name)
            .map(|s| s.2.clone())
            .collect()
    }
}

#[derive(Clone, Debug, Default)]
struct Tally {
    total: i64,
}

impl es_core::Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = i64;
    type Event = TestEvent;
    type Error = std::convert::Infallible;

    fn handle(&self, n: i64) -> Result<Vec<TestEvent>, Self::Error> {
        Ok(vec![TestEvent::Counted { n }])
    }

    fn apply(&mut self, event: &TestEvent) {
        if let TestEvent::Counted { n } = event {
            self.total += n;
        }
    }
}

/// A current-thread runtime, so that the worker's tasks run on the thread whose subscriber
/// captures the spans.
#[tokio::test(flavor = "current_thread")]
async fn commands_and_batches_run_in_spans_with_their_fields() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = Spans::default();
    let _capturing =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let db = TestDatabase::create().await;
    let repository = es_core::Repository::<Tally>::new(PgEventStore::new(db.pool.clone()));
    let stream = StreamId::new("tally-1").unwrap();
    for n in 1..=3 {
        repository.execute(&stream, n).await.unwrap();
    }
    let commands = spans.named("command");
    assert_eq!(commands.len(), 3, "{commands:?}");
    for (i, fields) in commands.iter().enumerate() {
        assert!(
            fields.contains("aggregate=tally")
                && fields.contains("stream=tally-1")
                && fields.contains(&format!("expected_version=version {i}"))
                && fields.contains("attempt=1"),
            "{fields}"
        );
    }

    let worker = Worker::new(db.pool.clone(), Upcasters::of::<TestEvent>())
        .projection(Audit { name: "audit" })
        .unwrap()
        .with_config(fast_config("traced"));
    let running = spawn(worker);
    wait_caught_up(&db.pool, "audit", Duration::from_secs(30)).await;
    running.stop().await;
    let batches = spans.named("batch");
    assert!(
        batches.iter().any(|f| f.contains("projection=audit")
            && f.contains("generation=1")
            && f.contains("first_position=1 ")
            && f.contains("last_position=3 ")
            && f.contains("events=3")),
        "{batches:?}"
    );
}
