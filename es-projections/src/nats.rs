//! Publishing to NATS JetStream (feature `nats`): [`JetStreamSink`], a [`Sink`] for a
//! [`Publisher`](crate::publisher::Publisher).
//!
//! Guarantees, with the publisher's checkpoint (see [`crate::publisher`]):
//! - **Exactly once per event, within the duplicate window.** Every message carries the event
//!   id in `Nats-Msg-Id`. JetStream drops a message whose id it stored within the stream's
//!   duplicate window, and acknowledges it as a duplicate. A publisher that crashed before its
//!   checkpoint publishes its last batch again, and nothing is stored twice, provided it
//!   resumes within the window ([`JetStreamOptions::duplicate_window`], default 2 minutes)
//!   of the first publication. One that resumes later stores that batch a second time (at most
//!   one batch: the events after the checkpoint); subscribers that must never see a repeat
//!   keep the last `es-stream-version` per stream, or the `Nats-Msg-Id`s, on their side. The
//!   trade-off of a longer window: the server keeps every id of the window in memory, and the
//!   window may not exceed the stream's `max_age`.
//! - **Each stream in order**, also when the broker restarts or the connection drops
//!   mid-batch. Two messages of one stream are never in flight together: a batch is sent in
//!   rounds, each with the first pending event of every stream of the batch, and the next
//!   round waits for every acknowledgement of this one. Were two events of a stream pipelined,
//!   the first could be lost with a dying connection (written to a socket the server never
//!   read) while the second, still in the client's buffer, is sent after the reconnect and
//!   stored: the stream would be reordered, and republishing the first would only append it
//!   after the second. With rounds, an event is sent only once the broker acknowledged its
//!   predecessor, so it is never stored without it. The cost: a batch of one stream takes one
//!   round trip per event; a batch spread over many streams publishes them in parallel.
//! - **Durable when acknowledged**, as far as the stream's storage goes: see below.
//!
//! What a message is: subject `<prefix>.<category>.<stream>` (see [`subject_for`]), payload the
//! event's JSON payload (after upcasting), headers `Nats-Msg-Id` (the event id) and
//! [`HEADER_STREAM`], [`HEADER_STREAM_VERSION`], [`HEADER_POSITION`], [`HEADER_EVENT_TYPE`],
//! [`HEADER_SCHEMA_VERSION`], [`HEADER_RECORDED_AT`], and [`HEADER_CORRELATION_ID`] /
//! [`HEADER_CAUSATION_ID`] when the event has them (the actor and free-form metadata headers
//! are not published). A subscriber filters a category with [`category_subjects`].
//!
//! Failures: a lost connection, a restarting server, an acknowledgement that does not come
//! within [`JetStreamOptions::ack_timeout`], a stream JetStream does not answer for (it is
//! created again on the next attempt), or full storage are transient (the worker retries from
//! its checkpoint). A message over the server's `max_payload` or the stream's
//! `max_msg_size`, a subject owned by another stream, a sealed stream, or an invalid option
//! are permanent (the publisher stops; raise the limit, or fix the configuration). Mind that
//! NATS's default `max_payload`, 1 MB with the headers, is below the store's default event
//! limit of 1 MiB ([`es_core::StoreLimits`]): a log with events near that size needs the
//! server's `max_payload` raised (to 2 MB, say). One refusal cannot be told apart: NATS
//! reports a subject the account may not publish to (a permissions violation) on the
//! connection, not to the message, so it shows as acknowledgements that time out, retried
//! until the permission is granted.
//!
//! The NATS and JetStream facts relied upon, checked in nats-server's source (server/stream.go
//! and server/filestore.go, read with the project's code search; the tests in
//! `tests/publisher.rs` and `examples/tests/publisher_kill.rs` then exercise them against
//! nats-server 2.9):
//! - the duplicate window defaults to 2 minutes (`StreamDefaultDuplicatesWindow`), and a
//!   message whose `Nats-Msg-Id` is in the window is not stored but acknowledged with
//!   `"duplicate": true` (`checkMsgId` in `processJetStreamMsg`);
//! - after a restart the server rebuilds that state from the stored messages: `rebuildDedupe`
//!   loads every message from `now - duplicate_window` to the last sequence and registers its
//!   `Nats-Msg-Id` again. So a broker restart does not let a repeat through;
//! - file storage writes a message to its block file before it is acknowledged ("flush in
//!   place" is the default: `fs.fip = !fcfg.AsyncFlush`), but syncs to disk in the background,
//!   every 2 minutes by default (`defaultSyncInterval`). An acknowledged message survives a
//!   crash of the broker process, not a power loss of a lone server: for that, run three
//!   replicas ([`JetStreamOptions::replicas`]) or the server with `sync_interval: always`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::{
    PublishError, PublishErrorKind, RequestError, RequestErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, HeaderValue};
use async_trait::async_trait;
use es_core::{RecordedEvent, StreamId};
use serde_json::Value;
use tracing::info;

use crate::publisher::{Sink, SinkError};

/// The client library, for subscribers and for connection options beyond these.
pub use async_nats;

/// The JetStream stream events go to unless [`JetStreamOptions::stream`] says otherwise.
pub const DEFAULT_STREAM: &str = "ES_EVENTS";
/// The first subject token unless [`JetStreamOptions::subject_prefix`] says otherwise.
pub const DEFAULT_SUBJECT_PREFIX: &str = "es";
/// JetStream's own default duplicate window.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The event id: JetStream's deduplication id.
pub const HEADER_MESSAGE_ID: &str = "Nats-Msg-Id";
/// The stream id, unescaped.
pub const HEADER_STREAM: &str = "es-stream";
/// The event's version in its stream (1 for the first).
pub const HEADER_STREAM_VERSION: &str = "es-stream-version";
/// The event's global position in the log.
pub const HEADER_POSITION: &str = "es-position";
/// The event type (current name after upcasting).
pub const HEADER_EVENT_TYPE: &str = "es-event-type";
/// The payload's schema version.
pub const HEADER_SCHEMA_VERSION: &str = "es-schema-version";
/// When the store recorded the event, RFC 3339 in UTC with microseconds.
pub const HEADER_RECORDED_AT: &str = "es-recorded-at";
/// The correlation id, when the event has one.
pub const HEADER_CORRELATION_ID: &str = "es-correlation-id";
/// The causation id, when the event has one.
pub const HEADER_CAUSATION_ID: &str = "es-causation-id";

/// Where a JetStream stream keeps its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// On disk (default): acknowledged messages survive a restart of the server.
    #[default]
    File,
    /// In memory: lost when the server stops. Not durable, so not for a publisher whose
    /// subscribers rely on the feed being complete; for tests and caches.
    Memory,
}

/// How a [`JetStreamSink`] publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamOptions {
    /// The JetStream stream (default [`DEFAULT_STREAM`]). Created when missing, with the
    /// subjects, duplicate window, storage and replicas below; an existing one keeps its other
    /// settings (limits, retention), gains the subjects if it lacks them and takes this
    /// duplicate window.
    pub stream: String,
    /// The first subject token(s) (default [`DEFAULT_SUBJECT_PREFIX`]); the stream captures
    /// `<prefix>.>`. Dot-separated tokens, none empty, none with whitespace, `*` or `>`.
    pub subject_prefix: String,
    /// How long JetStream remembers a message id (default [`DEFAULT_DUPLICATE_WINDOW`]): the
    /// exactly-once guarantee holds for a publisher that resumes within it (see the module
    /// docs for the trade-off).
    pub duplicate_window: Duration,
    /// Storage of a stream this sink creates (default [`Storage::File`]). An existing stream
    /// with memory storage is refused when file storage is asked for.
    pub storage: Storage,
    /// Replicas of a stream this sink creates (default 1; 3 in a cluster for a feed that
    /// survives the loss of a server). An existing stream keeps its own.
    pub replicas: usize,
    /// How long to wait for JetStream to acknowledge a message (and to answer the stream's
    /// management requests) before the batch fails as transient (default 5 s).
    pub ack_timeout: Duration,
    /// How long the first connection may take (default 5 s).
    pub connect_timeout: Duration,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        Self {
            stream: DEFAULT_STREAM.to_string(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.to_string(),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            storage: Storage::File,
            replicas: 1,
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl JetStreamOptions {
    /// Checks the options before anything is sent: every error here is permanent.
    fn check(&self) -> Result<(), SinkError> {
        let invalid = |what: String| Err(SinkError::from_message(what, false));
        let name_ok = !self.stream.is_empty()
            && self.stream.len() <= 255
            && self
                .stream
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'));
        if !name_ok {
            return invalid(format!(
                "invalid JetStream stream name {:?}: use 1 to 255 printable ASCII characters without '.', '*', '>', '/', '\\' or spaces",
                self.stream
            ));
        }
        let prefix_ok = !self.subject_prefix.starts_with('$')
            && self.subject_prefix.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
            });
        if !prefix_ok {
            return invalid(format!(
                "invalid subject prefix {:?}: use dot-separated tokens of printable ASCII, none empty, without '*', '>' or spaces, not starting with '$'",
                self.subject_prefix
            ));
        }
        if self.duplicate_window.is_zero() {
            return invalid("the duplicate window must be longer than zero".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid(format!(
                "{} replicas asked for: JetStream allows 1 to 5",
                self.replicas
            ));
        }
        if self.ack_timeout.is_zero() || self.connect_timeout.is_zero() {
            return invalid(
                "the acknowledgement and connection timeouts must be longer than zero".into(),
            );
        }
        Ok(())
    }
}

/// Publishes events to a JetStream stream: see the module docs for what is guaranteed and how.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, upcasters: es_core::Upcasters) -> Result<(), Box<dyn std::error::Error>> {
/// use es_projections::nats::{JetStreamOptions, JetStreamSink};
/// use es_projections::publisher::Publisher;
///
/// let sink = JetStreamSink::connect("nats://127.0.0.1:4222", JetStreamOptions::default()).await?;
/// let publisher = Publisher::new("deal_feed", sink)?.streams(|s| s.as_str().starts_with("deal-"));
/// // Run it with a worker; subscribers read subjects `es.deal.*`.
/// # let _ = (pool, upcasters, publisher);
/// # Ok(()) }
/// ```
pub struct JetStreamSink {
    context: jetstream::Context,
    options: JetStreamOptions,
    /// Where the server is, without credentials.
    servers: String,
    /// Whether the stream was found or created; cleared when JetStream stops answering for
    /// its subjects, so that the next batch makes sure of it again.
    stream_ready: AtomicBool,
}

impl fmt::Debug for JetStreamSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamSink")
            .field("servers", &self.servers)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl JetStreamSink {
    /// Connects to the server(s) at `url` (`nats://[user:password@]host:port`, or several,
    /// comma-separated) and creates or updates the stream (see
    /// [`JetStreamOptions::stream`]). After this first connection the client reconnects by
    /// itself whenever the connection drops; batches fail as transient meanwhile.
    ///
    /// Errors: an unreachable server is transient (the caller may retry); invalid options, a
    /// rejected login, or a stream configuration the server refuses are permanent. Messages
    /// name the server as `host:port`, never its credentials.
    pub async fn connect(url: &str, options: JetStreamOptions) -> Result<Self, SinkError> {
        options.check()?;
        let servers = display_servers(url);
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(options.connect_timeout)
            .name("es-projections publisher")
            .connect(url)
            .await
            .map_err(|error| {
                use async_nats::ConnectErrorKind as Kind;
                let transient = !matches!(
                    error.kind(),
                    Kind::ServerParse | Kind::Authentication | Kind::AuthorizationViolation
                );
                let message = format!(
                    "cannot connect to NATS at {servers}: {}",
                    scrub(&error.to_string(), url)
                );
                if transient {
                    SinkError::transient(message, error)
                } else {
                    SinkError::permanent(message, error)
                }
            })?;
        let context = jetstream::ContextBuilder::new()
            .timeout(options.ack_timeout)
            .build(client);
        let sink = Self {
            context,
            options,
            servers,
            stream_ready: AtomicBool::new(false),
        };
        sink.ensure_stream().await?;
        sink.stream_ready.store(true, Ordering::Release);
        Ok(sink)
    }

    /// The options.
    pub fn options(&self) -> &JetStreamOptions {
        &self.options
    }

    /// The subject events of `stream` are published on.
    pub fn subject(&self, stream: &StreamId) -> String {
        subject_for(&self.options.subject_prefix, stream)
    }

    /// The JetStream context (for reading the stream back, or for subscribers sharing the
    /// connection).
    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }

    /// Finds the stream, creating it when missing, and makes it capture our subjects with our
    /// duplicate window. Other settings of an existing stream are the operator's and kept
    /// as they are: the update sends back the configuration the server returned, field for
    /// field, with only those two changed.
    async fn ensure_stream(&self) -> Result<(), SinkError> {
        let name = &self.options.stream;
        // Twice at most: another publisher may create the stream between our look and our
        // create.
        for _ in 0..2 {
            let info: Response<Value> = self
                .context
                .request(format!("STREAM.INFO.{name}"), &())
                .await
                .map_err(|e| self.request_failure("read the stream's configuration", e))?;
            match info {
                Response::Ok(info) => return self.update_if_needed(info).await,
                Response::Err { error } if error.error_code() == ErrorCode::STREAM_NOT_FOUND => {}
                Response::Err { error } => {
                    return Err(self.api_failure("read the stream's configuration", error))
                }
            }
            let config = Config {
                name: name.clone(),
                subjects: vec![self.wildcard()],
                retention: RetentionPolicy::Limits,
                discard: DiscardPolicy::Old,
                max_messages: -1,
                max_bytes: -1,
                max_messages_per_subject: -1,
                max_consumers: -1,
                storage: match self.options.storage {
                    Storage::File => StorageType::File,
                    Storage::Memory => StorageType::Memory,
                },
                num_replicas: self.options.replicas,
                duplicate_window: self.options.duplicate_window,
                ..Config::default()
            };
            let created: Response<Value> = self
                .context
                .request(format!("STREAM.CREATE.{name}"), &config)
                .await
                .map_err(|e| self.request_failure("create the stream", e))?;
            match created {
                Response::Ok(_) => {
                    info!(stream = %name, subjects = %self.wildcard(), servers = %self.servers, "created the JetStream stream");
                    return Ok(());
                }
                Response::Err { error } if error.error_code() == ErrorCode::STREAM_NAME_EXIST => {}
                Response::Err { error } => return Err(self.api_failure("create the stream", error)),
            }
        }
        Err(SinkError::from_message(
            format!(
                "JetStream stream {name} at {}: neither found nor created; retrying",
                self.servers
            ),
            true,
        ))
    }

    async fn update_if_needed(&self, info: Value) -> Result<(), SinkError> {
        let name = &self.options.stream;
        let Some(Value::Object(mut config)) = info.get("config").cloned() else {
            return Err(SinkError::from_message(
                format!(
                    "JetStream at {} described stream {name} without a configuration",
                    self.servers
                ),
                true,
            ));
        };
        if self.options.storage == Storage::File
            && config.get("storage").and_then(Value::as_str) == Some("memory")
        {
            return Err(SinkError::from_message(
                format!(
                    "JetStream stream {name} at {} keeps its messages in memory, so acknowledged events would not survive a restart: delete the stream to let the publisher create it on file storage, or choose Storage::Memory",
                    self.servers
                ),
                false,
            ));
        }
        let wildcard = self.wildcard();
        let mut subjects: Vec<Value> = match config.get("subjects") {
            Some(Value::Array(subjects)) => subjects.clone(),
            _ => Vec::new(),
        };
        let covered = subjects
            .iter()
            .filter_map(Value::as_str)
            .any(|s| covers(s, &wildcard));
        let window = u64::try_from(self.options.duplicate_window.as_nanos()).unwrap_or(u64::MAX);
        let same_window = config.get("duplicate_window").and_then(Value::as_u64) == Some(window);
        if covered && same_window {
            return Ok(());
        }
        if !covered {
            subjects.push(Value::String(wildcard.clone()));
            config.insert("subjects".into(), Value::Array(subjects));
        }
        config.insert("duplicate_window".into(), Value::from(window));
        let updated: Response<Value> = self
            .context
            .request(format!("STREAM.UPDATE.{name}"), &Value::Object(config))
            .await
            .map_err(|e| self.request_failure("update the stream", e))?;
        match updated {
            Response::Ok(_) => {
                info!(stream = %name, subjects = %wildcard, window = ?self.options.duplicate_window, "updated the JetStream stream");
                Ok(())
            }
            Response::Err { error } => Err(self.api_failure("update the stream", error)),
        }
    }

    /// `<prefix>.>`.
    fn wildcard(&self) -> String {
        format!("{}.>", self.options.subject_prefix)
    }

    /// The message for an event, checked before anything of the batch is sent.
    fn message(&self, event: &RecordedEvent) -> Result<(String, PublishMessage), SinkError> {
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: &str| -> Result<(), SinkError> {
            let value: HeaderValue = value.parse().map_err(|e| {
                SinkError::permanent(
                    format!(
                        "event {} cannot be published: its {name} {value:?} holds a line break, which NATS headers cannot carry",
                        Located(event)
                    ),
                    e,
                )
            })?;
            headers.insert(name, value);
            Ok(())
        };
        put(HEADER_MESSAGE_ID, &event.event_id.to_string())?;
        put(HEADER_STREAM, event.stream_id.as_str())?;
        put(HEADER_STREAM_VERSION, &event.stream_version.0.to_string())?;
        put(HEADER_POSITION, &event.global_position.0.to_string())?;
        put(HEADER_EVENT_TYPE, &event.event_type)?;
        put(HEADER_SCHEMA_VERSION, &event.schema_version.to_string())?;
        put(
            HEADER_RECORDED_AT,
            &event
                .recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        )?;
        if let Some(id) = event.metadata.correlation_id {
            put(HEADER_CORRELATION_ID, &id.to_string())?;
        }
        if let Some(id) = event.metadata.causation_id {
            put(HEADER_CAUSATION_ID, &id.to_string())?;
        }
        // JetStream refuses the message unless it lands in our stream: a subject that another
        // stream captures is an error, not a silent publication elsewhere.
        put("Nats-Expected-Stream", &self.options.stream)?;
        let payload = event.payload.json_text().into_owned();
        let message = PublishMessage::build()
            .payload(payload.into())
            .headers(headers);
        Ok((self.subject(&event.stream_id), message))
    }

    fn request_failure(&self, action: &str, error: RequestError) -> SinkError {
        let name = &self.options.stream;
        match error.kind() {
            RequestErrorKind::NoResponders => SinkError::transient(
                format!(
                    "cannot {action} of JetStream stream {name}: no JetStream answers at {} (is the server started with JetStream, `-js`, and up?)",
                    self.servers
                ),
                error,
            ),
            _ => SinkError::transient(
                format!("cannot {action} of JetStream stream {name} at {}: {error}", self.servers),
                error,
            ),
        }
    }

    fn api_failure(&self, action: &str, error: async_nats::jetstream::Error) -> SinkError {
        let message = format!(
            "JetStream at {} refused to {action} of stream {}: {error}",
            self.servers, self.options.stream
        );
        if is_transient(&error) {
            SinkError::transient(message, error)
        } else {
            SinkError::permanent(message, error)
        }
    }

    /// What a failed publication of `event` means for the batch.
    fn publish_failure(&self, event: &RecordedEvent, error: PublishError) -> SinkError {
        let at = Located(event);
        let stream = &self.options.stream;
        match error.kind() {
            PublishErrorKind::TimedOut => SinkError::transient(
                format!(
                    "JetStream at {} did not acknowledge event {at} within {:?} (server down or restarting?)",
                    self.servers, self.options.ack_timeout
                ),
                error,
            ),
            PublishErrorKind::BrokenPipe => SinkError::transient(
                format!(
                    "the connection to NATS at {} dropped before JetStream acknowledged event {at}",
                    self.servers
                ),
                error,
            ),
            PublishErrorKind::StreamNotFound => {
                self.stream_ready.store(false, Ordering::Release);
                SinkError::transient(
                    format!(
                        "no JetStream stream at {} answered for subject {} of event {at} (JetStream starting, or stream {stream} deleted: it is created again on the next attempt)",
                        self.servers,
                        self.subject(&event.stream_id)
                    ),
                    error,
                )
            }
            PublishErrorKind::MaxAckPending => SinkError::transient(
                format!("too many acknowledgements pending at {}: {error}", self.servers),
                error,
            ),
            PublishErrorKind::MaxPayloadExceeded => SinkError::permanent(
                format!(
                    "event {at} is larger than the NATS server at {} accepts ({error}): raise its max_payload",
                    self.servers
                ),
                error,
            ),
            _ => {
                let refused = std::error::Error::source(&error)
                    .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
                    .map(|e| (is_transient(e), e.to_string()));
                match refused {
                    Some((transient, reason)) => {
                        let message = format!(
                            "JetStream stream {stream} at {} refused event {at}: {reason}",
                            self.servers
                        );
                        if transient {
                            SinkError::transient(message, error)
                        } else {
                            SinkError::permanent(message, error)
                        }
                    }
                    None => SinkError::transient(
                        format!("cannot publish event {at} to NATS at {}: {error}", self.servers),
                        error,
                    ),
                }
            }
        }
    }
}

#[async_trait]
impl Sink for JetStreamSink {
    fn describe(&self) -> String {
        format!(
            "NATS JetStream stream {} (subjects {}) at {}",
            self.options.stream,
            self.wildcard(),
            self.servers
        )
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), SinkError> {
        if events.is_empty() {
            return Ok(());
        }
        if !self.stream_ready.load(Ordering::Acquire) {
            self.ensure_stream().await?;
            self.stream_ready.store(true, Ordering::Release);
        }
        // Every message is built (and checked) before anything is sent.
        let mut messages = events
            .iter()
            .map(|event| self.message(event).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        // Rounds: at most one message per stream in flight (see the module docs).
        for round in rounds(events) {
            let mut in_flight = Vec::with_capacity(round.len());
            for i in round {
                let (Some(event), Some((subject, message))) =
                    (events.get(i), messages.get_mut(i).and_then(Option::take))
                else {
                    continue;
                };
                let ack = self
                    .context
                    .send_publish(subject, message)
                    .await
                    .map_err(|e| self.publish_failure(event, e))?;
                in_flight.push(async move { (event, ack.await) });
            }
            let mut failure: Option<SinkError> = None;
            for (event, acked) in futures::future::join_all(in_flight).await {
                let error = match acked {
                    Ok(ack) if ack.stream == self.options.stream => continue,
                    Ok(ack) => SinkError::from_message(
                        format!(
                            "event {} was stored in JetStream stream {}, not {}: its subject belongs to that stream",
                            Located(event),
                            ack.stream,
                            self.options.stream
                        ),
                        false,
                    ),
                    Err(error) => self.publish_failure(event, error),
                };
                // A permanent failure is what the operator must see: it will recur.
                if failure.as_ref().is_none_or(SinkError::is_transient) {
                    failure = Some(error);
                }
            }
            if let Some(failure) = failure {
                return Err(failure);
            }
        }
        Ok(())
    }
}

/// The order of publication, as rounds of indices into `events`: round `r` holds the `r`-th
/// event of every stream that has one, streams in order of first appearance. So each stream
/// appears at most once per round, in the order given across rounds.
fn rounds(events: &[RecordedEvent]) -> Vec<Vec<usize>> {
    let mut queues: Vec<VecDeque<usize>> = Vec::new();
    let mut queue_of: HashMap<&StreamId, usize> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        let queue = *queue_of.entry(&event.stream_id).or_insert_with(|| {
            queues.push(VecDeque::new());
            queues.len() - 1
        });
        if let Some(queue) = queues.get_mut(queue) {
            queue.push_back(i);
        }
    }
    let mut rounds = Vec::new();
    loop {
        let round: Vec<usize> = queues.iter_mut().filter_map(VecDeque::pop_front).collect();
        if round.is_empty() {
            return rounds;
        }
        rounds.push(round);
    }
}

/// JetStream API errors worth retrying: the server or cluster is busy, starting, or out of
/// resources an operator can free. Others (a message too large, a subject another stream
/// owns, a sealed stream, an invalid configuration) recur on every attempt.
fn is_transient(error: &async_nats::jetstream::Error) -> bool {
    const TRANSIENT: [ErrorCode; 15] = [
        ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
        ErrorCode::CLUSTER_INCOMPLETE,
        ErrorCode::CLUSTER_NO_PEERS,
        ErrorCode::CLUSTER_NOT_ACTIVE,
        ErrorCode::CLUSTER_NOT_AVAILABLE,
        ErrorCode::CLUSTER_NOT_LEADER,
        ErrorCode::INSUFFICIENT_RESOURCES,
        ErrorCode::MEMORY_RESOURCES_EXCEEDED,
        ErrorCode::RAFT_GENERAL,
        ErrorCode::STORAGE_RESOURCES_EXCEEDED,
        ErrorCode::STREAM_NOT_FOUND,
        ErrorCode::STREAM_OFFLINE,
        ErrorCode::STREAM_STORE_FAILED,
        ErrorCode::TEMP_STORAGE_FAILED,
        ErrorCode::JETSTREAM_NOT_ENABLED,
    ];
    TRANSIENT.contains(&error.error_code()) || error.code() >= 500
}

/// Whether subject filter `filter` captures every subject of `wildcard` (`<prefix>.>`).
fn covers(filter: &str, wildcard: &str) -> bool {
    filter == ">"
        || filter == wildcard
        || filter
            .strip_suffix('>')
            .is_some_and(|head| head.ends_with('.') && wildcard.starts_with(head))
}

/// An event as error messages name it.
struct Located<'a>(&'a RecordedEvent);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        write!(
            f,
            "{} ({} v{} at stream {} version {}, position {})",
            e.event_id,
            e.event_type,
            e.schema_version,
            e.stream_id,
            e.stream_version,
            e.global_position
        )
    }
}

/// The servers of a NATS URL list as `host:port`, without scheme, credentials or path.
fn display_servers(url: &str) -> String {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|server| {
            let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            let host = rest.split(['/', '?']).next().unwrap_or(rest);
            let has_port = match host.rsplit_once(':') {
                Some((h, port)) => !port.is_empty() && (!h.contains(':') || h.ends_with(']')),
                None => false,
            };
            if has_port {
                host.to_string()
            } else {
                format!("{host}:4222")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `text` without the credentials of any server of `url`.
fn scrub(text: &str, url: &str) -> String {
    let mut text = text.to_string();
    for server in url.split(',') {
        let rest = server.trim().split_once("://").map_or(server, |(_, r)| r);
        if let Some((credentials, _)) = rest.rsplit_once('@') {
            if !credentials.is_empty() {
                text = text.replace(credentials, "***");
                if let Some((_, password)) = credentials.split_once(':') {
                    if !password.is_empty() {
                        text = text.replace(password, "***");
                    }
                }
            }
        }
    }
    text
}

/// The stream's category: its id up to the first `-` (`deal-42` → `deal`), the whole id when
/// it has none.
pub fn category(stream: &StreamId) -> &str {
    let id = stream.as_str();
    id.split_once('-').map_or(id, |(category, _)| category)
}

/// The subject events of `stream` are published on: `<prefix>.<category>.<stream>`, each of
/// the last two tokens escaped with [`escape_token`] (`deal-42` → `es.deal.deal-42`,
/// `tenant:acme.deal` → `es.tenant%3Aacme%2Edeal.tenant%3Aacme%2Edeal`).
pub fn subject_for(prefix: &str, stream: &StreamId) -> String {
    format!(
        "{prefix}.{}.{}",
        escape_token(category(stream)),
        escape_token(stream.as_str())
    )
}

/// The subjects of one category, for a subscriber's filter: `<prefix>.<category>.*`.
pub fn category_subjects(prefix: &str, category: &str) -> String {
    format!("{prefix}.{}.*", escape_token(category))
}

/// The stream a subject of [`subject_for`] belongs to; `None` for any other subject (another
/// prefix, a wrong number of tokens, a token that is not an escaped stream id, or a category
/// that does not match the stream).
pub fn stream_of_subject(prefix: &str, subject: &str) -> Option<StreamId> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (category_token, stream_token) = rest.split_once('.')?;
    let stream = StreamId::from_stored(unescape_token(stream_token)?).ok()?;
    (escape_token(category(&stream)) == category_token).then_some(stream)
}

/// Escapes a subject token, reversibly ([`unescape_token`]). NATS subjects are tokens
/// separated by `.`; a token may not be empty nor hold whitespace, and `*` and `>` are
/// wildcards. The scheme: ASCII letters, digits, `-` and `_` stand for themselves; every other
/// byte of the UTF-8 text becomes `%` and two uppercase hex digits (`.` → `%2E`, `%` →
/// `%25`, `é` → `%C3%A9`); the empty token becomes a lone `%`. The encoding is canonical (one
/// escaped form per text), so subjects can be compared as strings.
pub fn escape_token(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if token.is_empty() {
        return "%".to_string();
    }
    let mut escaped = String::with_capacity(token.len());
    for byte in token.bytes() {
        if plain(byte) {
            escaped.push(char::from(byte));
        } else {
            escaped.push('%');
            escaped.push(char::from(HEX[usize::from(byte >> 4)]));
            escaped.push(char::from(HEX[usize::from(byte & 0x0F)]));
        }
    }
    escaped
}

/// The text an [`escape_token`] token stands for; `None` when it is not the canonical escape
/// of any text (a bare character outside the plain set, lowercase or missing hex digits, an
/// escaped plain character, bytes that are not UTF-8).
pub fn unescape_token(token: &str) -> Option<String> {
    if token == "%" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut text = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let high = hex_digit(*bytes.get(i + 1)?)?;
                let low = hex_digit(*bytes.get(i + 2)?)?;
                let byte = high << 4 | low;
                if plain(byte) {
                    return None;
                }
                text.push(byte);
                i += 3;
            }
            byte if plain(byte) => {
                text.push(byte);
                i += 1;
            }
            _ => return None,
        }
    }
    if text.is_empty() {
        return None;
    }
    String::from_utf8(text).ok()
}

fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(s: &str) -> StreamId {
        StreamId::new(s).unwrap()
    }

    #[test]
    fn subjects_follow_the_category() {
        assert_eq!(subject_for("es", &id("deal-42")), "es.deal.deal-42");
        assert_eq!(subject_for("es", &id("deal-42-x")), "es.deal.deal-42-x");
        assert_eq!(
            subject_for("acme.events", &id("user_7")),
            "acme.events.user_7.user_7"
        );
        assert_eq!(subject_for("es", &id("-x")), "es.%.-x");
        assert_eq!(category_subjects("es", "deal"), "es.deal.*");
    }

    #[test]
    fn characters_that_subjects_forbid_are_escaped() {
        assert_eq!(escape_token("a.b"), "a%2Eb");
        assert_eq!(escape_token("*"), "%2A");
        assert_eq!(escape_token(">"), "%3E");
        assert_eq!(escape_token("a b\u{a0}"), "a%20b%C2%A0");
        assert_eq!(escape_token("100%"), "100%25");
        assert_eq!(escape_token(""), "%");
        assert_eq!(escape_token("é"), "%C3%A9");
        for stream in [
            "a.b",
            "*",
            ">",
            "x y",
            "%",
            "tenant:acme/deal-1",
            "é-ü.*>",
            "a..b",
            "-",
            "--",
        ] {
            let subject = subject_for("es", &id(stream));
            let tokens: Vec<&str> = subject.split('.').collect();
            assert_eq!(tokens.len(), 3, "{subject}");
            assert!(
                tokens.iter().all(|t| !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')),
                "{subject} is not a valid literal subject"
            );
        }
    }

    #[test]
    fn escaping_round_trips() {
        let samples = [
            "deal-42",
            "a.b.c",
            "*",
            ">",
            "a b",
            "%",
            "%25",
            "tenant:acme/deal-1",
            "日本-語",
            "x\u{1F600}y",
            "-",
            "-a",
            "a-",
        ];
        for sample in samples {
            let stream = id(sample);
            assert_eq!(
                unescape_token(&escape_token(sample)).as_deref(),
                Some(sample)
            );
            let subject = subject_for("es", &stream);
            assert_eq!(stream_of_subject("es", &subject), Some(stream), "{subject}");
        }
        assert_eq!(unescape_token("%").as_deref(), Some(""));
    }

    #[test]
    fn only_canonical_escapes_decode() {
        assert_eq!(unescape_token("a%2eb"), None, "lowercase hex");
        assert_eq!(unescape_token("%41"), None, "an escaped plain character");
        assert_eq!(unescape_token("a%2"), None, "a short escape");
        assert_eq!(unescape_token("a.b"), None, "a bare dot");
        assert_eq!(unescape_token("%FF"), None, "not UTF-8");
        assert_eq!(unescape_token(""), None);
        assert_eq!(
            stream_of_subject("es", "es.user.deal-1"),
            None,
            "wrong category"
        );
        assert_eq!(
            stream_of_subject("es", "other.deal.deal-1"),
            None,
            "another prefix"
        );
        assert_eq!(
            stream_of_subject("es", "es.deal.deal-1.x"),
            None,
            "too many tokens"
        );
        assert_eq!(stream_of_subject("es", "esx.deal.deal-1"), None);
    }

    #[test]
    fn servers_are_shown_without_credentials() {
        assert_eq!(display_servers("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(
            display_servers("nats://bob:s3cret@nats.local:4223"),
            "nats.local:4223"
        );
        assert_eq!(
            display_servers("tls://token@h1, nats://h2:1"),
            "h1:4222,h2:1"
        );
        assert_eq!(display_servers("[::1]:4222"), "[::1]:4222");
        assert_eq!(display_servers("localhost"), "localhost:4222");
        let scrubbed = scrub("auth failed for bob:s3cret", "nats://bob:s3cret@h:1");
        assert!(!scrubbed.contains("s3cret"), "{scrubbed}");
    }

    #[test]
    fn options_are_checked() {
        assert!(JetStreamOptions::default().check().is_ok());
        let bad = [
            JetStreamOptions {
                stream: "a.b".into(),
                ..Default::default()
            },
            JetStreamOptions {
                stream: String::new(),
                ..Default::default()
            },
            JetStreamOptions {
                subject_prefix: "es.".into(),
                ..Default::default()
            },
            JetStreamOptions {
                subject_prefix: "es.*".into(),
                ..Default::default()
            },
            JetStreamOptions {
                subject_prefix: "$JS".into(),
                ..Default::default()
            },
            JetStreamOptions {
                duplicate_window: Duration::ZERO,
                ..Default::default()
            },
            JetStreamOptions {
                replicas: 0,
                ..Default::default()
            },
        ];
        for options in bad {
            let error = options.check().unwrap_err();
            assert!(!error.is_transient(), "{error}");
        }
    }

    #[test]
    fn rounds_hold_each_stream_once_and_keep_its_order() {
        let streams = ["a", "b", "a", "c", "a", "b", "d", "a"];
        let events: Vec<RecordedEvent> = streams
            .iter()
            .enumerate()
            .map(|(i, s)| RecordedEvent {
                event_id: uuid::Uuid::new_v4(),
                stream_id: id(s),
                stream_version: es_core::StreamVersion(i as u64 + 1),
                global_position: es_core::GlobalPosition(i as i64 + 1),
                event_type: "E".into(),
                schema_version: 1,
                payload: serde_json::json!({}).into(),
                metadata: es_core::Metadata::default(),
                recorded_at: chrono::Utc::now(),
            })
            .collect();
        assert_eq!(
            rounds(&events),
            vec![vec![0, 1, 3, 6], vec![2, 5], vec![4], vec![7]]
        );
        assert!(rounds(&[]).is_empty());
    }

    #[test]
    fn a_wildcard_is_covered_by_itself_or_a_wider_filter() {
        assert!(covers("es.>", "es.>"));
        assert!(covers(">", "es.>"));
        assert!(covers("acme.>", "acme.es.>"));
        assert!(!covers("es.deal.>", "es.>"));
        assert!(!covers("e>", "es.>"));
        assert!(!covers("esx.>", "es.>"));
    }
}
