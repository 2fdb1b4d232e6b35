//! Publishing the log to a message broker: a [`Publisher`] is a consumer (see
//! [`crate::consumer`]) that hands each batch of the log to a [`Sink`], such as the NATS
//! JetStream sink of `es_projections::nats` (feature `nats`).
//!
//! Guarantees, given a sink that keeps the [`Sink`] contract:
//! - **Every event reaches the broker exactly once in effect.** The checkpoint moves past a
//!   batch only after the sink said the broker durably stored all of it. A crash (or a lost
//!   connection, or a broker restart) before that publishes the batch again from the
//!   checkpoint, and the broker drops the repeats by their deduplication id, the event id.
//!   How long the broker remembers ids bounds this: see the sink's docs (JetStream: its
//!   duplicate window).
//! - **Each stream in order.** Events reach the sink in the worker's delivery order, which keeps
//!   each stream's versions in order; the sink stores them in that order per stream. Events of
//!   different streams carry no order between them (the log's global order is not kept: a
//!   subscriber that needs it reads the position header).
//! - **At most one publisher at a time** per name, across processes, through the worker's
//!   lease. Order holds even when a stale holder and its successor publish the same stream at
//!   once: each batch starts at a checkpoint, behind which every event was stored, and the
//!   sink stores no event of a batch before the earlier ones of its stream.
//!
//! What is published: each event after upcasting, in the current shape of its type
//! ([`Upcasters::upcast`]), so that subscribers, like projectors, never see a legacy schema.
//! Events of types the worker's registry does not know (other services' events in a shared
//! log) are published as stored, with their stored type and schema version. An event the
//! registry knows but cannot upcast (no path, an upcaster failing, a malformed payload) stops
//! the publisher, named in `status`: a publisher never parks an event, since a subscriber could
//! not tell a parked event from one that never happened.
//!
//! Failures: a [`SinkError`] that is transient (broker down, acknowledgement timed out) is
//! retried by the worker from the checkpoint with a backoff; a permanent one (a message the
//! broker refuses) stops the publisher and is recorded in `status` until a fix and a restart.
//!
//! The publisher keeps nothing of its own: its checkpoint is the worker's (`es_projections`
//! row of its name), the broker keeps what was published.
//!
//! Other brokers implement [`Sink`]; docs/design.md ("Publishing to a broker") says what a Kafka
//! sink needs to keep the contract (the stream id as the record key, an idempotent or
//! transactional producer) and what a RabbitMQ one would.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use es_core::{BoxError, DecodeErrorKind, RecordedEvent, StoreError, StreamId, Upcasters};
use tracing::debug;

use crate::consumer::{ConsumerContext, ConsumerKind, DynConsumer, KeepAlive};
use crate::engine::BatchOutcome;
use crate::error::{InvalidName, ProjectionError};
use crate::projector::validate_name;

/// A broker that events are published to.
///
/// The contract of [`Sink::publish`], which the [`Publisher`]'s guarantees rest on:
/// - `Ok` only when the broker has durably acknowledged every event of the slice (stored, not
///   merely sent);
/// - the events of one stream are stored in the order given (the caller passes them in
///   per-stream order): an event is never stored unless the stream's earlier events of the
///   slice are;
/// - each message carries the event id as its deduplication id, so that publishing an event
///   again (after a crash before the checkpoint) is dropped by the broker, not stored twice.
///
/// On `Err`, any prefix of each stream's events may have been stored: the caller publishes
/// the whole slice again.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Where events go, for logs and status (e.g. `NATS JetStream stream ES_EVENTS at
    /// 10.0.0.5:4222`). Never a secret: no password or token from a URL.
    fn describe(&self) -> String;

    /// Publishes the events, returning once the broker has durably stored all of them (see
    /// the trait's contract).
    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), SinkError>;
}

/// Why a sink could not publish. Transient errors are retried by the worker from the
/// checkpoint; permanent ones stop the publisher.
///
/// The message says what failed in words an operator can act on, and already includes the
/// text of the cause; [`source`](std::error::Error::source) keeps the cause itself for code
/// that inspects it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    message: String,
    transient: bool,
    #[source]
    source: Option<BoxError>,
}

impl SinkError {
    /// A failure that may pass (the broker down or restarting, a timeout, a full disk): the
    /// worker retries the batch from the checkpoint with a backoff.
    pub fn transient(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            transient: true,
            source: Some(source.into()),
        }
    }

    /// A failure that will happen again however often it is retried (a message too large for
    /// the broker, a subject it refuses, a misconfiguration): the publisher stops, and
    /// `status` shows this message until it is fixed and the worker restarted.
    pub fn permanent(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            transient: false,
            source: Some(source.into()),
        }
    }

    /// A failure with no underlying error (an invariant the broker's answer breaks, a bad
    /// option); `transient` as in [`SinkError::transient`] and [`SinkError::permanent`].
    pub fn from_message(message: impl Into<String>, transient: bool) -> Self {
        Self {
            message: message.into(),
            transient,
            source: None,
        }
    }

    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The human message (the same as the `Display` text).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Which streams a publisher publishes.
type StreamFilter = Arc<dyn Fn(&StreamId) -> bool + Send + Sync>;

/// How often a publisher looks at its lease while the sink works on a batch. The lease itself
/// is renewed only when a third of it has passed ([`KeepAlive::renew_if_due`]).
const LEASE_CHECK: Duration = Duration::from_millis(500);

/// Publishes the log to a [`Sink`], run by a worker like a projection (checkpointed, leased,
/// resumed after a crash): see the module docs for its guarantees.
///
/// ```
/// use async_trait::async_trait;
/// use es_core::RecordedEvent;
/// use es_projections::publisher::{Publisher, Sink, SinkError};
///
/// /// A sink that prints (a real one stores durably and deduplicates by event id).
/// struct Print;
///
/// #[async_trait]
/// impl Sink for Print {
///     fn describe(&self) -> String { "stdout".into() }
///     async fn publish(&self, events: &[RecordedEvent]) -> Result<(), SinkError> {
///         for e in events {
///             println!("{} {} v{}", e.event_id, e.stream_id, e.stream_version);
///         }
///         Ok(())
///     }
/// }
///
/// let publisher = Publisher::new("deal_feed", Print)?
///     .streams(|s| s.as_str().starts_with("deal-"));
/// assert_eq!(publisher.name(), "deal_feed");
/// # Ok::<(), es_projections::InvalidName>(())
/// ```
pub struct Publisher<S> {
    name: String,
    sink: S,
    streams: StreamFilter,
}

impl<S: fmt::Debug> fmt::Debug for Publisher<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("name", &self.name)
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl<S: Sink> Publisher<S> {
    /// A publisher of every stream to `sink`. `name` keys its checkpoint, in the namespace of
    /// projections and reactors (1 to 40 lowercase letters, digits and underscores, starting
    /// with a letter); renaming it publishes the whole log again (which the broker drops as
    /// duplicates only within its deduplication window).
    pub fn new(name: impl Into<String>, sink: S) -> Result<Self, InvalidName> {
        let name = name.into();
        validate_name("publisher", &name)?;
        Ok(Self {
            name,
            sink,
            streams: Arc::new(|_| true),
        })
    }

    /// Publishes only the streams `filter` accepts (default: all). Events of other streams
    /// are skipped without being decoded. Changing the filter later does not publish the
    /// past events of streams it now accepts: use a new name for that.
    pub fn streams(mut self, filter: impl Fn(&StreamId) -> bool + Send + Sync + 'static) -> Self {
        self.streams = Arc::new(filter);
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The event as published: upcast when the registry knows its type, as stored when it does
    /// not (see the module docs).
    fn upcast(
        &self,
        upcasters: &Upcasters,
        event: RecordedEvent,
    ) -> Result<RecordedEvent, ProjectionError> {
        // A type with a current version is known: upcasting it either works or is an error.
        // Without one, the type may still be an old name that steps rename: only then is the
        // copy (kept for an unknown type) needed.
        let stored = upcasters
            .current_version(&event.event_type)
            .is_none()
            .then(|| event.clone());
        match (upcasters.upcast(event), stored) {
            (Ok(current), _) => Ok(current),
            (Err(error), Some(stored))
                if matches!(error.kind, DecodeErrorKind::UnknownEventType) =>
            {
                Ok(stored)
            }
            (Err(source), _) => Err(ProjectionError::Decode {
                projection: self.name.clone(),
                source,
            }),
        }
    }

    /// A sink error as the worker needs it: transient ones are retried from the checkpoint,
    /// permanent ones stop the publisher.
    fn failure(&self, error: SinkError) -> ProjectionError {
        let message = format!(
            "publisher {} to {}: {}",
            self.name,
            self.sink.describe(),
            error.message()
        );
        let transient = error.is_transient();
        ProjectionError::Store(StoreError::storage(message, transient, error))
    }

    /// Runs the sink on `events`, keeping the lease alive meanwhile (a batch of one stream
    /// publishes one event per round trip, and a broker restart makes acknowledgements wait).
    /// False when the lease was lost on the way: publishing stops there, and the worker, which
    /// sees the loss too ([`KeepAlive::lost`]), writes no checkpoint. What this batch stored is
    /// dropped as duplicates when the new holder publishes it; per-stream order holds either
    /// way (see the [`Sink`] contract).
    async fn publish_leased(
        &self,
        events: &[RecordedEvent],
        keep_alive: &mut (dyn KeepAlive + Send),
    ) -> Result<bool, ProjectionError> {
        let mut publish = self.sink.publish(events);
        let mut check = tokio::time::interval(LEASE_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            tokio::select! {
                published = &mut publish => return published.map(|()| true).map_err(|e| self.failure(e)),
                _ = check.tick() => {
                    if !keep_alive.renew_if_due().await? {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

#[async_trait]
impl<S: Sink> DynConsumer for Publisher<S> {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ConsumerKind {
        ConsumerKind::Publisher
    }

    fn accepts_stream(&self, stream: &StreamId) -> bool {
        (self.streams)(stream)
    }

    async fn handle_batch(
        &self,
        events: Vec<RecordedEvent>,
        context: &mut ConsumerContext<'_>,
    ) -> Result<BatchOutcome, ProjectionError> {
        let mut published = Vec::with_capacity(events.len());
        for event in events {
            if (self.streams)(&event.stream_id) {
                published.push(self.upcast(context.upcasters, event)?);
            }
        }
        if published.is_empty() {
            return Ok(BatchOutcome::default());
        }
        if !self
            .publish_leased(&published, &mut *context.keep_alive)
            .await?
        {
            debug!(publisher = %self.name, "lease lost while publishing; stopping this batch");
            return Ok(BatchOutcome::default());
        }
        debug!(
            publisher = %self.name,
            events = published.len(),
            "batch acknowledged by the broker"
        );
        Ok(BatchOutcome {
            applied: published.len(),
            parked: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use chrono::Utc;
    use es_core::{DomainEvent, GlobalPosition, Metadata, StreamVersion};
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Clone, Debug, Serialize, Deserialize)]
    enum Known {
        Renamed { n: i64 },
    }
    impl DomainEvent for Known {
        const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Renamed", 2)];
    }

    #[derive(Debug)]
    struct Nowhere;

    #[async_trait]
    impl Sink for Nowhere {
        fn describe(&self) -> String {
            "nowhere".into()
        }
        async fn publish(&self, _: &[RecordedEvent]) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn event(event_type: &str, schema_version: u32, payload: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::new_v4(),
            stream_id: StreamId::new("s-1").unwrap(),
            stream_version: StreamVersion(1),
            global_position: GlobalPosition(1),
            event_type: event_type.into(),
            schema_version,
            payload: payload.into(),
            metadata: Metadata::default(),
            recorded_at: Utc::now(),
        }
    }

    fn registry() -> Upcasters {
        Upcasters::builder()
            .register::<Known>()
            .rename("Old", 1, "Renamed", |mut p| {
                p["n"] = json!(p["n"].as_i64().unwrap_or(0) * 10);
                Ok(p)
            })
            .build()
            .unwrap()
    }

    #[test]
    fn names_are_validated() {
        assert!(Publisher::new("deal_feed", Nowhere).is_ok());
        let error = Publisher::new("Deal-Feed", Nowhere).unwrap_err();
        assert_eq!(error.kind, "publisher");
    }

    #[test]
    fn known_types_are_upcast_and_unknown_ones_published_as_stored() {
        let publisher = Publisher::new("p", Nowhere).unwrap();
        let upcasters = registry();
        let renamed = publisher
            .upcast(&upcasters, event("Old", 1, json!({"n": 4})))
            .unwrap();
        assert_eq!(
            (renamed.event_type.as_str(), renamed.schema_version),
            ("Renamed", 2)
        );
        assert_eq!(renamed.payload.to_value().unwrap(), json!({"n": 40}));

        let foreign = publisher
            .upcast(&upcasters, event("Shipped", 3, json!({"x": 1})))
            .unwrap();
        assert_eq!(
            (foreign.event_type.as_str(), foreign.schema_version),
            ("Shipped", 3)
        );
        assert_eq!(foreign.payload.to_value().unwrap(), json!({"x": 1}));
    }

    #[test]
    fn a_known_type_that_cannot_be_upcast_stops_the_publisher() {
        let publisher = Publisher::new("p", Nowhere).unwrap();
        let error = publisher
            .upcast(&registry(), event("Renamed", 1, json!({})))
            .unwrap_err();
        assert!(matches!(error, ProjectionError::Decode { .. }), "{error}");
        assert!(!error.is_transient());
    }

    #[test]
    fn sink_errors_keep_their_kind_and_name_the_publisher() {
        let publisher = Publisher::new("p", Nowhere).unwrap();
        let transient = publisher.failure(SinkError::transient("broker down", "refused"));
        assert!(transient.is_transient());
        assert!(transient
            .to_string()
            .contains("publisher p to nowhere: broker down"));
        let permanent = publisher.failure(SinkError::from_message("too large", false));
        assert!(!permanent.is_transient());
    }

    #[test]
    fn the_stream_filter_applies() {
        let publisher = Publisher::new("p", Nowhere)
            .unwrap()
            .streams(|s| s.as_str().starts_with("deal-"));
        assert!(publisher.accepts_stream(&StreamId::new("deal-1").unwrap()));
        assert!(!publisher.accepts_stream(&StreamId::new("user-1").unwrap()));
    }
}
