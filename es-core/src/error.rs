//! Typed errors. Each variant says what the caller should do about it.

use std::error::Error as StdError;
use std::fmt;

use crate::stream::{ExpectedVersion, GlobalPosition, StreamId, StreamVersion};

/// A boxed error from a storage backend, kept as the source of [`StoreError::Storage`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Errors of an [`EventStore`](crate::EventStore). Whatever the variant, a failed append wrote
/// nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first. Retryable: reload the stream (or aggregate)
    /// and decide again; [`Repository`](crate::Repository) does this for you.
    #[error("conflict on stream {stream}: expected {expected}, but the stream is at {}", display_version(.actual))]
    Conflict {
        /// The stream appended to.
        stream: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's version when the conflict was seen (None: no events), if known.
        actual: Option<StreamVersion>,
    },
    /// The append held no events. A caller bug: do not call append with nothing to write.
    #[error("append to stream {stream} holds no events")]
    EmptyAppend {
        /// The stream appended to.
        stream: StreamId,
    },
    /// One event's payload and metadata together exceed the store's size limit. Not
    /// retryable: store large blobs elsewhere and reference them from the event.
    #[error("event {event_type} for stream {stream} is {size} bytes, over the limit of {limit}")]
    EventTooLarge {
        /// The stream appended to.
        stream: StreamId,
        /// The offending event's type.
        event_type: String,
        /// Its encoded size in bytes.
        size: usize,
        /// The store's limit in bytes.
        limit: usize,
    },
    /// A string or object key in an event's payload or metadata holds a NUL character
    /// (`\u0000`), which PostgreSQL's `jsonb` cannot store. Every store refuses it before
    /// writing, the in-memory one too, so that a test meets the refusal production would. Not
    /// retryable: remove the character, or carry binary data encoded (base64). Nothing was
    /// written.
    #[error(
        "event {event_type} (number {} of the append to stream {stream}) holds a NUL character (\\u0000) in {} of its {part}: PostgreSQL's jsonb cannot store it; remove it, or encode binary data (base64). Nothing was written",
        .index + 1,
        describe_pointer(.pointer)
    )]
    NulCharacter {
        /// The stream appended to.
        stream: StreamId,
        /// The event's index in the append (0 for the first).
        index: usize,
        /// The event's type.
        event_type: String,
        /// Where in the event: `"payload"` or `"metadata"`.
        part: &'static str,
        /// The JSON pointer (RFC 6901) of the first string holding it, or of the object member
        /// whose key holds it; `""` when the whole payload is that string.
        pointer: String,
    },
    /// A snapshot's state holds a NUL character, which PostgreSQL's jsonb cannot store: nothing
    /// was written, the stream's previous snapshot (if any) is kept.
    #[error(
        "the snapshot of {aggregate_type} stream {stream} holds a NUL character (\\u0000) in {} of its state: PostgreSQL's jsonb cannot store it; encode binary data (base64). The previous snapshot is kept",
        describe_pointer(.pointer)
    )]
    NulInSnapshot {
        /// The stream.
        stream: StreamId,
        /// The aggregate type.
        aggregate_type: String,
        /// The JSON pointer (RFC 6901) of the first string holding it (or of the member whose
        /// key does).
        pointer: String,
    },
    /// An event type name is empty or too long. A caller bug.
    #[error("invalid event type {event_type:?}: {reason}")]
    InvalidEventType {
        /// The rejected name.
        event_type: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An event id is already in the store (or twice in one commit). Event ids are unique
    /// across the whole log; a caller that reuses one is replaying a write it already made. Use
    /// an idempotency key to make a repeated command safe. Nothing was written.
    #[error("event id {event_id} is already stored; nothing was written")]
    DuplicateEventId {
        /// The id.
        event_id: uuid::Uuid,
    },
    /// The idempotency key was first used for a different command (another stream, aggregate
    /// or command content). A caller bug: keys must identify one command. Nothing was written.
    #[error("idempotency key {key:?} was already used for a different command")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
    /// The unique value is held by another stream (an e-mail address already registered).
    /// Report it to the user; nothing was written.
    #[error("{scope} {value:?} is already held by stream {holder}")]
    UniqueValueTaken {
        /// The scope of the value, e.g. `user-email`.
        scope: String,
        /// The value claimed.
        value: String,
        /// The stream that holds it.
        holder: StreamId,
    },
    /// A commit that cannot be written as asked: no streams, one stream twice, a stream with
    /// no events, an invalid key or unique value. A caller bug; nothing was written.
    #[error("invalid commit: {reason}")]
    InvalidCommit {
        /// What is wrong with it.
        reason: String,
    },
    /// The backend failed (connection lost, server restarting, ...). The append may be retried
    /// if [`StoreError::is_transient`] says so; the source tells what happened.
    #[error("storage error: {message}")]
    Storage {
        /// What the store was doing.
        message: String,
        /// Whether retrying the same call may succeed.
        transient: bool,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// A storage error: what the store was doing, whether retrying may succeed, and the
    /// backend's error.
    pub fn storage(
        message: impl Into<String>,
        transient: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        StoreError::Storage {
            message: message.into(),
            transient,
            source: source.into(),
        }
    }

    /// A storage error with no backend error beneath it (an invariant the stored data breaks,
    /// a task that stopped): the message is also the source.
    pub fn storage_message(message: impl Into<String>, transient: bool) -> Self {
        let message = message.into();
        StoreError::Storage {
            source: message.clone().into(),
            message,
            transient,
        }
    }

    pub(crate) fn invalid_commit(reason: impl Into<String>) -> Self {
        StoreError::InvalidCommit {
            reason: reason.into(),
        }
    }

    /// Whether this is an optimistic concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// Whether the same call may succeed if retried as is (a lost connection, a restart).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Storage {
                transient: true,
                ..
            }
        )
    }
}

fn describe_pointer(pointer: &str) -> String {
    if pointer.is_empty() {
        "the top-level string".to_string()
    } else {
        format!(
            "the string or key at {}",
            crate::stream::escape_for_display(pointer)
        )
    }
}

fn display_version(v: &Option<StreamVersion>) -> String {
    match v {
        Some(v) => format!("version {v}"),
        None => "no stream".to_string(),
    }
}

/// An event that could not be turned into its stored form. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Serde failed to serialise the event or its metadata.
    #[error("cannot serialise event: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The event enum did not serialise as `{"Variant": payload}` (serde's default, externally
    /// tagged form) or as a unit variant name. Remove `#[serde(tag/untagged)]` from the event enum,
    /// or implement `DomainEvent::encode` yourself.
    #[error("event does not serialise as an externally tagged enum: {found}")]
    NotExternallyTagged {
        /// A short description of what it serialised to.
        found: String,
    },
    /// The event type is missing from the enum's `DomainEvent::EVENT_TYPES`. Add it there with
    /// its current schema version.
    #[error("event type {event_type} is not listed in DomainEvent::EVENT_TYPES")]
    UnlistedEventType {
        /// The type name.
        event_type: String,
    },
    /// The aggregate's state did not serialise for a snapshot
    /// ([`Repository::snapshot_now`](crate::Repository::snapshot_now)). Fix its `Serialize`
    /// (a map with non-string keys is the usual cause).
    #[error("cannot serialise the aggregate's state for a snapshot: {0}")]
    SnapshotState(#[source] serde_json::Error),
    /// Metadata given as JSON was not an object of the expected shape.
    #[error("invalid metadata: {reason}")]
    InvalidMetadata {
        /// What was wrong.
        reason: String,
    },
}

/// Where a stored event sits and what it is: the place every [`DecodeError`] names, so that an
/// operator can find the row (`SELECT * FROM es_events WHERE global_position = ...`). es-projections
/// uses it too, for the event a projection stopped on or parked (it replaced that crate's
/// `EventRef`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLocation {
    /// The event's stream.
    pub stream: StreamId,
    /// The event's version in its stream.
    pub stream_version: StreamVersion,
    /// The event's global position.
    pub position: GlobalPosition,
    /// Its type name. For an event that upcaster steps rename, stored or reached depends on who
    /// reports it: a [`DecodeError`] names the pair the failure was met at (see
    /// [`DecodeErrorKind`]); other holders say which in their docs.
    pub event_type: String,
    /// Its schema version, the one that goes with `event_type`.
    pub schema_version: u32,
}

impl fmt::Display for EventLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v{} at stream {} version {}, position {}",
            self.event_type, self.schema_version, self.stream, self.stream_version, self.position
        )
    }
}

/// A stored event that could not be made into the current event type: where it is ([`at`]) and
/// what went wrong ([`kind`]). The event is named so that an operator can find it; nothing was
/// skipped.
///
/// [`at`]: DecodeError::at
/// [`kind`]: DecodeError::kind
#[derive(Debug)]
pub struct DecodeError {
    /// The event. Its type and schema version are those the failure was met at, which for an
    /// event that went through upcaster steps is not the stored pair: see each
    /// [`DecodeErrorKind`] variant.
    pub at: EventLocation,
    /// What went wrong, and so what to do.
    pub kind: DecodeErrorKind,
}

/// What went wrong in a [`DecodeError`]. Each variant says what the caller should do.
#[derive(Debug)]
pub enum DecodeErrorKind {
    /// No one registered this event type. Register the event enum that defines it (or an
    /// upcaster that renames it) in the [`Upcasters`](crate::Upcasters) registry. From
    /// [`Upcasters::decode_required`](crate::Upcasters::decode_required) (a repository), also a
    /// registered type that the enum does not define: check that the stream belongs to this
    /// aggregate type. The location's type and version are the stored ones after any renames
    /// and steps.
    UnknownEventType,
    /// The schema version has no chain of upcasters to the current version. Register the
    /// missing step (or deploy the code that knows this newer version). The location's type and
    /// version are those reached: the stored ones after the steps that did exist.
    NoUpcastPath {
        /// The current schema version of the type reached.
        current_version: u32,
    },
    /// An upcaster step returned an error for this event. Fix the step so that it handles every
    /// stored payload of its version. The location's type and version are those the failing
    /// step takes.
    UpcasterFailed {
        /// The step's message.
        message: String,
    },
    /// The payload does not deserialise into the current event type (or, before a step, into
    /// JSON). Fix the upcaster or the event definition; the stored row stays as it is. Serde's
    /// complaint is also the error's [`source`](StdError::source).
    MalformedPayload(serde_json::Error),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = &self.at;
        match &self.kind {
            DecodeErrorKind::UnknownEventType => write!(f, "unknown event type {at}: register it"),
            // Worded as before the location was factored out: the schema-evolution guide quotes
            // this message.
            DecodeErrorKind::NoUpcastPath { current_version } => write!(
                f,
                "no upcaster path for {} v{} to v{current_version} at stream {} version {}, position {}",
                at.event_type, at.schema_version, at.stream, at.stream_version, at.position
            ),
            DecodeErrorKind::UpcasterFailed { message } => {
                write!(f, "upcaster for {at} failed: {message}")
            }
            DecodeErrorKind::MalformedPayload(source) => {
                write!(f, "malformed payload for {at}: {source}")
            }
        }
    }
}

// Written by hand rather than derived with thiserror: the source sits inside one variant of
// the kind, which `#[source]` cannot reach.
impl StdError for DecodeError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            DecodeErrorKind::MalformedPayload(source) => Some(source),
            _ => None,
        }
    }
}

/// Errors of [`Repository`](crate::Repository) calls.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError<E: StdError + 'static> {
    /// The aggregate refused the command. Nothing was written; report it to the user.
    #[error("command rejected: {0}")]
    Domain(#[source] E),
    /// Conflicts kept happening after the retry policy's last attempt. Nothing was written; the
    /// stream is hot: retry later or reduce contention on it.
    #[error("stream {stream} still conflicted after {attempts} attempts")]
    TooManyConflicts {
        /// The stream.
        stream: StreamId,
        /// How many times the command was tried.
        attempts: u32,
    },
    /// A stored event could not be decoded. Nothing was written.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The new events could not be encoded. Nothing was written.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The store failed, or refused the write (a unique value taken, a reused idempotency
    /// key: see [`StoreError`]). Nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log holds events this code cannot read (a schema version with no upcaster path).
    /// Found before anything was loaded or written; fix the registry and restart.
    #[error(transparent)]
    Unreadable(#[from] crate::upcast::UpcasterChainError),
    /// [`Repository::snapshot_now`](crate::Repository::snapshot_now) on a repository with no
    /// snapshot store. A caller bug: build it with
    /// [`Repository::with_snapshots`](crate::Repository::with_snapshots).
    #[error("this repository has no snapshot store: build it with with_snapshots")]
    NoSnapshotStore,
}
