//! Events: the [`DomainEvent`] trait that application event enums implement, the [`EventData`]
//! written by an append, and the [`RecordedEvent`] envelope read back.
//!
//! Events are stored as JSON: the enum variant's name is the event type, the variant's content
//! the payload. An event type carries a schema version so that its shape can evolve; stored
//! events of older versions are upcast on read (see [`crate::upcast`]).

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::EncodeError;
use crate::payload::Payload;
use crate::stream::{GlobalPosition, StreamId, StreamVersion};

/// An application's event enum.
///
/// Derive `Serialize` and `Deserialize` with serde's default (externally tagged) enum form, and
/// list every variant name with its current schema version in [`DomainEvent::EVENT_TYPES`]:
///
/// ```
/// use es_core::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// enum AccountEvent {
///     Opened { owner: String },
///     Deposited { amount: u64 },
///     Closed,
/// }
///
/// impl DomainEvent for AccountEvent {
///     // `Deposited` changed shape once: stored v1 rows are upcast to v2 on read.
///     const EVENT_TYPES: &'static [(&'static str, u32)] =
///         &[("Opened", 1), ("Deposited", 2), ("Closed", 1)];
/// }
///
/// let (event_type, payload) = AccountEvent::Deposited { amount: 5 }.encode().unwrap();
/// assert_eq!(event_type, "Deposited");
/// assert_eq!(AccountEvent::decode(&event_type, payload).unwrap(), AccountEvent::Deposited { amount: 5 });
/// assert_eq!(AccountEvent::current_version("Deposited"), Some(2));
/// ```
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// Every event type this enum defines, with its current schema version.
    const EVENT_TYPES: &'static [(&'static str, u32)];

    /// The current schema version of `event_type`, if this enum defines it.
    fn current_version(event_type: &str) -> Option<u32> {
        Self::EVENT_TYPES
            .iter()
            .find(|(name, _)| *name == event_type)
            .map(|(_, version)| *version)
    }

    /// Whether this enum defines `event_type`.
    fn handles(event_type: &str) -> bool {
        Self::current_version(event_type).is_some()
    }

    /// Splits the event into its type name and JSON payload.
    fn encode(&self) -> Result<(String, Value), EncodeError> {
        match serde_json::to_value(self).map_err(EncodeError::Serialize)? {
            Value::String(unit_variant) => Ok((unit_variant, Value::Null)),
            Value::Object(map) if map.len() == 1 => {
                let (name, payload) =
                    map.into_iter()
                        .next()
                        .ok_or_else(|| EncodeError::NotExternallyTagged {
                            found: "an empty object".into(),
                        })?;
                Ok((name, payload))
            }
            other => Err(EncodeError::NotExternallyTagged {
                found: describe(&other),
            }),
        }
    }

    /// Builds the event from its type name and a payload already upcast to the current version.
    fn decode(event_type: &str, payload: Value) -> Result<Self, serde_json::Error> {
        crate::payload::decode_tagged(event_type, payload)
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(m) => format!("an object with {} keys", m.len()),
    }
}

/// Who and what caused an event, stored beside it. Serialised as one JSON object: the named
/// fields plus free-form `headers`. Any other key is refused ([`Metadata::from_json`]) or, in a
/// stored row written by another tool, kept by moving the whole object into `headers`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Ties together every event caused by one user request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The message (command or event) that caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The user or system that issued the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Anything else, e.g. a tenant or a trace id.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub headers: Map<String, Value>,
}

impl Metadata {
    /// Metadata with a correlation id.
    pub fn correlated(correlation_id: Uuid) -> Self {
        Self {
            correlation_id: Some(correlation_id),
            ..Self::default()
        }
    }

    /// Parses metadata that arrived as JSON (e.g. from a message header). It must be an object
    /// of the named fields and `headers`; an unknown key is an error rather than silently lost.
    pub fn from_json(value: Value) -> Result<Self, EncodeError> {
        if !value.is_object() {
            return Err(EncodeError::InvalidMetadata {
                reason: format!("metadata must be a JSON object, not {}", describe(&value)),
            });
        }
        serde_json::from_value(value).map_err(|e| EncodeError::InvalidMetadata {
            reason: e.to_string(),
        })
    }

    /// The metadata as a JSON object.
    pub fn to_json(&self) -> Value {
        // Serialising a struct of options, a uuid and a map of JSON values cannot fail.
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

/// An event ready to be appended: type, schema version, payload and metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct EventData {
    /// Unique id of this event (a UUIDv7, time-ordered, unless given).
    pub event_id: Uuid,
    /// The event type name.
    pub event_type: String,
    /// The schema version the payload is written in: always the current one.
    pub schema_version: u32,
    /// The payload.
    pub payload: Value,
    /// Who and what caused it.
    pub metadata: Metadata,
}

impl EventData {
    /// Encodes a domain event, stamping its current schema version.
    pub fn from_event<E: DomainEvent>(event: &E, metadata: Metadata) -> Result<Self, EncodeError> {
        let (event_type, payload) = event.encode()?;
        let schema_version =
            E::current_version(&event_type).ok_or_else(|| EncodeError::UnlistedEventType {
                event_type: event_type.clone(),
            })?;
        Ok(Self {
            event_id: Uuid::now_v7(),
            event_type,
            schema_version,
            payload,
            metadata,
        })
    }

    /// An event from raw parts (for tools and tests that write JSON directly).
    pub fn raw(event_type: impl Into<String>, schema_version: u32, payload: Value) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata: Metadata::default(),
        }
    }

    /// The size this event counts against a store's limit: payload plus metadata, as JSON.
    pub fn encoded_size(&self) -> usize {
        json_len(&self.payload) + json_len(&self.metadata.to_json())
    }
}

fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a Value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// A stored event with its envelope, as read back from a store.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    /// Unique id of the event.
    pub event_id: Uuid,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version within the stream (1 for the first event).
    pub stream_version: StreamVersion,
    /// Its position in the global log.
    pub global_position: GlobalPosition,
    /// The event type name (after upcasting: the current name).
    pub event_type: String,
    /// The schema version of `payload` (after upcasting: the current one).
    pub schema_version: u32,
    /// The payload: the JSON text read from the store, or a value (see [`Payload`]).
    pub payload: Payload,
    /// Who and what caused it.
    pub metadata: Metadata,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
}

/// A stored event as replaying its stream into an aggregate needs it: what to decode, and where
/// it sits (for errors). Lighter to read than a [`RecordedEvent`]: no id, metadata or time
/// (see [`EventStore::read_stream_for_fold`](crate::EventStore::read_stream_for_fold)).
#[derive(Clone, Debug, PartialEq)]
pub struct FoldEvent {
    /// Its version within the stream.
    pub stream_version: StreamVersion,
    /// Its position in the global log.
    pub global_position: GlobalPosition,
    /// The stored event type name.
    pub event_type: String,
    /// The stored schema version.
    pub schema_version: u32,
    /// The payload.
    pub payload: Payload,
}

impl From<RecordedEvent> for FoldEvent {
    fn from(event: RecordedEvent) -> Self {
        Self {
            stream_version: event.stream_version,
            global_position: event.global_position,
            event_type: event.event_type,
            schema_version: event.schema_version,
            payload: event.payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum E {
        Created { id: u32 },
        Renamed(String),
        Closed,
    }
    impl DomainEvent for E {
        const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Created", 1), ("Renamed", 1)];
    }

    #[test]
    fn encode_decode_round_trip() {
        for e in [E::Created { id: 3 }, E::Renamed("x".into())] {
            let (t, p) = e.encode().unwrap();
            assert_eq!(E::decode(&t, p).unwrap(), e);
        }
        let (t, p) = E::Closed.encode().unwrap();
        assert_eq!((t.as_str(), &p), ("Closed", &Value::Null));
        assert_eq!(E::decode("Closed", p).unwrap(), E::Closed);
    }

    #[test]
    fn unlisted_type_cannot_be_written() {
        assert!(matches!(
            EventData::from_event(&E::Closed, Metadata::default()),
            Err(EncodeError::UnlistedEventType { .. })
        ));
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert!(Metadata::from_json(serde_json::json!([1])).is_err());
        assert!(Metadata::from_json(serde_json::json!({"correlation_id": 5})).is_err());
        assert!(Metadata::from_json(serde_json::json!({"tenant": "t1"})).is_err());
        let m =
            Metadata::from_json(serde_json::json!({"actor": "ann", "headers": {"t": 1}})).unwrap();
        assert_eq!(m.actor.as_deref(), Some("ann"));
        assert_eq!(Metadata::from_json(m.to_json()).unwrap(), m);
    }

    #[test]
    fn size_counts_payload_and_metadata() {
        let e = EventData::raw("T", 1, serde_json::json!({"a": "bc"}));
        assert_eq!(e.encoded_size(), r#"{"a":"bc"}"#.len() + 2);
    }
}
