//! Upcasting: turning stored events of older schema versions into the current ones, on read.
//!
//! Stored rows are never rewritten. Every read path (loading an aggregate, feeding a projector)
//! goes through [`Upcasters::decode`], so no handler ever sees a legacy shape. The registry is
//! checked when it is built: a missing step, a duplicate step, or a step that leads nowhere is an
//! error at start-up, not when the old event is first read.
//!
//! ```
//! use es_core::{DomainEvent, Upcasters};
//! use serde::{Deserialize, Serialize};
//! use serde_json::json;
//!
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! enum DealEvent { Configured { fields: serde_json::Map<String, serde_json::Value> } }
//! impl DomainEvent for DealEvent {
//!     const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Configured", 2)];
//! }
//!
//! let upcasters = Upcasters::builder()
//!     .register::<DealEvent>()
//!     // v1 was called "DealConfigured" and carried one field at the top level.
//!     .rename("DealConfigured", 1, "Configured", |payload| {
//!         Ok(json!({ "fields": payload }))
//!     })
//!     .build()
//!     .unwrap();
//! assert_eq!(upcasters.current_version("Configured"), Some(2));
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::error::{DecodeError, DecodeErrorKind, EventLocation};
use crate::event::{DomainEvent, FoldEvent, RecordedEvent};
use crate::payload::Payload;
use crate::stream::{GlobalPosition, StreamId, StreamVersion};

/// The function of one upcaster step: the stored payload at version N in, version N+1 out.
pub type UpcastFn = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

#[derive(Clone)]
struct Step {
    to_type: String,
    function: UpcastFn,
}

/// A registry that is not consistent. Fix the registration at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcasterChainError {
    /// Two registered enums give the same event type different current versions.
    #[error("event type {event_type} is registered at versions {first} and {second}")]
    ConflictingVersions {
        /// The type.
        event_type: String,
        /// One version.
        first: u32,
        /// The other.
        second: u32,
    },
    /// Two steps start from the same type and version.
    #[error("two upcasters start from {event_type} v{version}")]
    DuplicateStep {
        /// The type.
        event_type: String,
        /// The version.
        version: u32,
    },
    /// A step starts at or beyond the type's current version.
    #[error(
        "upcaster from {event_type} v{version} starts at or beyond the current version {current}"
    )]
    StepFromCurrent {
        /// The type.
        event_type: String,
        /// The step's starting version.
        version: u32,
        /// The registered current version.
        current: u32,
    },
    /// A chain of steps stops at a version below the current one: the next step is missing.
    #[error("no upcaster from {event_type} v{version} (current is v{current})")]
    MissingStep {
        /// The type reached.
        event_type: String,
        /// The version reached.
        version: u32,
        /// The current version of that type.
        current: u32,
    },
    /// A chain of steps ends at a type no registered enum defines.
    #[error("upcasters lead from {from_type} v{from_version} to {event_type} v{version}, which no registered event enum defines")]
    UnknownTarget {
        /// Where the chain started.
        from_type: String,
        /// Its starting version.
        from_version: u32,
        /// The type it ends at.
        event_type: String,
        /// The version it ends at.
        version: u32,
    },
    /// The log holds events of a known type at a schema version this registry cannot bring to
    /// the current one (a bump without its upcaster step, or events written by newer code).
    /// Found at start-up by [`Upcasters::check_stored`], before any event is applied.
    #[error("the log holds {event_type} v{schema_version} events, and there is no upcaster path from there to {reached_type} v{current}: register the missing step (or deploy the code that wrote them)")]
    StoredWithoutPath {
        /// The stored type.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// The type the chain of steps reaches.
        reached_type: String,
        /// The current version of that type.
        current: u32,
    },
    /// A chain of steps returns to a type and version it already passed.
    #[error("upcasters from {event_type} v{version} form a cycle")]
    Cycle {
        /// Where the cycle was found.
        event_type: String,
        /// The version.
        version: u32,
    },
}

/// Collects event enums and upcaster steps; [`UpcastersBuilder::build`] checks them.
#[derive(Default)]
pub struct UpcastersBuilder {
    current: Vec<(String, u32)>,
    steps: Vec<(String, u32, Step)>,
}

impl UpcastersBuilder {
    /// Registers every event type of an enum at its current version.
    pub fn register<E: DomainEvent>(mut self) -> Self {
        self.current.extend(
            E::EVENT_TYPES
                .iter()
                .map(|(name, version)| (name.to_string(), *version)),
        );
        self
    }

    /// Adds a step that takes `event_type` from `from_version` to `from_version + 1`.
    pub fn step<F>(self, event_type: &str, from_version: u32, upcast: F) -> Self
    where
        F: Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.rename(event_type, from_version, event_type, upcast)
    }

    /// Adds a step that takes `old_type` at `from_version` to `new_type` at `from_version + 1`.
    pub fn rename<F>(mut self, old_type: &str, from_version: u32, new_type: &str, upcast: F) -> Self
    where
        F: Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.steps.push((
            old_type.to_string(),
            from_version,
            Step {
                to_type: new_type.to_string(),
                function: Arc::new(upcast),
            },
        ));
        self
    }

    /// Checks the registry: no conflicting versions, no duplicate step, and every chain of steps
    /// ends exactly at a registered type's current version.
    pub fn build(self) -> Result<Upcasters, UpcasterChainError> {
        let mut current: HashMap<String, u32> = HashMap::new();
        for (name, version) in self.current {
            match current.get(&name) {
                Some(&first) if first != version => {
                    return Err(UpcasterChainError::ConflictingVersions {
                        event_type: name,
                        first,
                        second: version,
                    })
                }
                _ => {
                    current.insert(name, version);
                }
            }
        }
        let mut steps: HashMap<(String, u32), Step> = HashMap::new();
        for (event_type, version, step) in self.steps {
            if let Some(&cur) = current.get(&event_type) {
                if version >= cur {
                    return Err(UpcasterChainError::StepFromCurrent {
                        event_type,
                        version,
                        current: cur,
                    });
                }
            }
            let key = (event_type, version);
            if steps.contains_key(&key) {
                return Err(UpcasterChainError::DuplicateStep {
                    event_type: key.0,
                    version: key.1,
                });
            }
            steps.insert(key, step);
        }
        // Walk every chain to its end: it must end at a registered current version.
        for (from_type, from_version) in steps.keys() {
            let mut seen = HashSet::new();
            let (mut event_type, mut version) = (from_type.clone(), *from_version);
            while let Some(step) = steps.get(&(event_type.clone(), version)) {
                if !seen.insert((event_type.clone(), version)) {
                    return Err(UpcasterChainError::Cycle {
                        event_type,
                        version,
                    });
                }
                event_type = step.to_type.clone();
                version += 1;
            }
            match current.get(&event_type) {
                None => {
                    return Err(UpcasterChainError::UnknownTarget {
                        from_type: from_type.clone(),
                        from_version: *from_version,
                        event_type,
                        version,
                    })
                }
                Some(&cur) if cur != version => {
                    return Err(UpcasterChainError::MissingStep {
                        event_type,
                        version,
                        current: cur,
                    })
                }
                Some(_) => {}
            }
        }
        Ok(Upcasters { current, steps })
    }
}

/// A checked registry of event types and upcaster steps: the one place where stored events
/// become current ones.
#[derive(Clone)]
pub struct Upcasters {
    current: HashMap<String, u32>,
    steps: HashMap<(String, u32), Step>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upcasters")
            .field("current", &self.current)
            .field("steps", &self.steps.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A decoded event with its envelope: what aggregates' loaders and projectors receive.
#[derive(Clone, Debug, PartialEq)]
pub struct EventEnvelope<E> {
    /// The event, in its current shape.
    pub event: E,
    /// Unique id of the event.
    pub event_id: uuid::Uuid,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version within the stream.
    pub stream_version: StreamVersion,
    /// Its position in the global log.
    pub global_position: GlobalPosition,
    /// Its current type name.
    pub event_type: String,
    /// Who and what caused it.
    pub metadata: crate::event::Metadata,
    /// When it was recorded.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

impl Upcasters {
    /// Starts a registry.
    pub fn builder() -> UpcastersBuilder {
        UpcastersBuilder::default()
    }

    /// A registry of one event enum with no upcasters.
    pub fn of<E: DomainEvent>() -> Self {
        Upcasters {
            current: E::EVENT_TYPES
                .iter()
                .map(|(name, version)| (name.to_string(), *version))
                .collect(),
            steps: HashMap::new(),
        }
    }

    /// Checks that every stored (event type, schema version) of a type this registry knows
    /// (a registered type, or one its steps rename) has a path to the current version. Types
    /// it does not know are left alone: they belong to other aggregates.
    ///
    /// ```
    /// use es_core::{DomainEvent, UpcasterChainError, Upcasters};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    /// # enum DealEvent { Configured {} }
    /// impl DomainEvent for DealEvent {
    ///     // Bumped to v2, but the step from v1 was forgotten: the registry alone is fine.
    ///     const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Configured", 2)];
    /// }
    /// let upcasters = Upcasters::of::<DealEvent>();
    /// let stored = [("Configured".to_string(), 1), ("Deposited".to_string(), 1)];
    /// assert!(matches!(
    ///     upcasters.check_stored(&stored),
    ///     Err(UpcasterChainError::StoredWithoutPath { schema_version: 1, .. })
    /// ));
    /// ```
    pub fn check_stored(&self, stored: &[(String, u32)]) -> Result<(), UpcasterChainError> {
        let renamed: HashSet<&str> = self.steps.keys().map(|(t, _)| t.as_str()).collect();
        for (event_type, schema_version) in stored {
            let known =
                self.current.contains_key(event_type) || renamed.contains(event_type.as_str());
            if !known {
                continue;
            }
            let (mut reached, mut version) = (event_type.clone(), *schema_version);
            // Chains were checked for cycles when the registry was built.
            while let Some(step) = self.steps.get(&(reached.clone(), version)) {
                reached = step.to_type.clone();
                version += 1;
            }
            match self.current.get(&reached) {
                Some(&current) if current == version => {}
                current => {
                    return Err(UpcasterChainError::StoredWithoutPath {
                        event_type: event_type.clone(),
                        schema_version: *schema_version,
                        reached_type: reached,
                        current: current.copied().unwrap_or(version),
                    })
                }
            }
        }
        Ok(())
    }

    /// The current schema version of a registered type.
    pub fn current_version(&self, event_type: &str) -> Option<u32> {
        self.current.get(event_type).copied()
    }

    /// Brings a stored event to the current version of its (possibly renamed) type.
    pub fn upcast(&self, event: RecordedEvent) -> Result<RecordedEvent, DecodeError> {
        let at = At::of(
            &event.stream_id,
            event.stream_version,
            event.global_position,
        );
        let shape = self.upcast_shape(
            &at,
            Shape {
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload,
            },
        )?;
        Ok(RecordedEvent {
            event_type: shape.event_type,
            schema_version: shape.schema_version,
            payload: shape.payload,
            ..event
        })
    }

    /// Upcasts a stored event and decodes it as `E`. Returns `Ok(None)` for a registered type
    /// that `E` does not define (a projector that does not handle it simply skips it).
    pub fn decode<E: DomainEvent>(
        &self,
        event: RecordedEvent,
    ) -> Result<Option<EventEnvelope<E>>, DecodeError> {
        let event = self.upcast(event)?;
        if !E::handles(&event.event_type) {
            return Ok(None);
        }
        decode_current(event).map(Some)
    }

    /// Like [`Upcasters::decode`], but an event `E` does not define is an error: an aggregate's
    /// stream must hold only its own events (another aggregate's type here usually means a
    /// wrong stream id).
    pub fn decode_required<E: DomainEvent>(
        &self,
        event: RecordedEvent,
    ) -> Result<EventEnvelope<E>, DecodeError> {
        let event = self.upcast(event)?;
        if !E::handles(&event.event_type) {
            return Err(unknown(
                &At::of(
                    &event.stream_id,
                    event.stream_version,
                    event.global_position,
                ),
                event.event_type,
                event.schema_version,
            ));
        }
        decode_current(event)
    }

    /// [`Upcasters::decode_required`] for an event of `stream` read for folding: just the event.
    pub fn decode_fold<E: DomainEvent>(
        &self,
        stream: &StreamId,
        event: FoldEvent,
    ) -> Result<E, DecodeError> {
        let at = At::of(stream, event.stream_version, event.global_position);
        let shape = self.upcast_shape(
            &at,
            Shape {
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload,
            },
        )?;
        if !E::handles(&shape.event_type) {
            return Err(unknown(&at, shape.event_type, shape.schema_version));
        }
        match shape.payload.decode::<E>(&shape.event_type) {
            Ok(decoded) => Ok(decoded),
            Err(source) => Err(at.malformed(shape.event_type, shape.schema_version, source)),
        }
    }

    /// Runs the steps from the stored shape to the current one, and checks that it is current.
    fn upcast_shape(&self, at: &At<'_>, mut shape: Shape) -> Result<Shape, DecodeError> {
        loop {
            let key = (shape.event_type, shape.schema_version);
            let Some(step) = self.steps.get(&key) else {
                (shape.event_type, shape.schema_version) = key;
                break;
            };
            let payload = match std::mem::take(&mut shape.payload).into_value() {
                Ok(payload) => payload,
                Err(source) => return Err(at.malformed(key.0, key.1, source)),
            };
            let upcast = (step.function)(payload).map_err(|message| {
                at.error(
                    key.0.clone(),
                    key.1,
                    DecodeErrorKind::UpcasterFailed { message },
                )
            })?;
            shape = Shape {
                event_type: step.to_type.clone(),
                schema_version: key.1 + 1,
                payload: upcast.into(),
            };
        }
        match self.current.get(&shape.event_type) {
            None => Err(unknown(at, shape.event_type, shape.schema_version)),
            Some(&current) if current != shape.schema_version => Err(at.error(
                shape.event_type,
                shape.schema_version,
                DecodeErrorKind::NoUpcastPath {
                    current_version: current,
                },
            )),
            Some(_) => Ok(shape),
        }
    }
}

/// What upcasting rewrites.
struct Shape {
    event_type: String,
    schema_version: u32,
    payload: Payload,
}

/// Where a stored event sits, for the errors that name it.
struct At<'a> {
    stream: &'a StreamId,
    stream_version: StreamVersion,
    position: GlobalPosition,
}

impl<'a> At<'a> {
    fn of(stream: &'a StreamId, stream_version: StreamVersion, position: GlobalPosition) -> Self {
        Self {
            stream,
            stream_version,
            position,
        }
    }

    /// An error of `kind` for this event, met at `event_type` v`schema_version`.
    fn error(&self, event_type: String, schema_version: u32, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            at: EventLocation {
                stream: self.stream.clone(),
                stream_version: self.stream_version,
                position: self.position,
                event_type,
                schema_version,
            },
            kind,
        }
    }

    fn malformed(
        &self,
        event_type: String,
        schema_version: u32,
        source: serde_json::Error,
    ) -> DecodeError {
        self.error(
            event_type,
            schema_version,
            DecodeErrorKind::MalformedPayload(source),
        )
    }
}

fn unknown(at: &At<'_>, event_type: String, schema_version: u32) -> DecodeError {
    at.error(
        event_type,
        schema_version,
        DecodeErrorKind::UnknownEventType,
    )
}

/// Decodes an event already at the current version of a type `E` defines.
fn decode_current<E: DomainEvent>(event: RecordedEvent) -> Result<EventEnvelope<E>, DecodeError> {
    match event.payload.decode::<E>(&event.event_type) {
        Ok(decoded) => Ok(EventEnvelope {
            event: decoded,
            event_id: event.event_id,
            stream_id: event.stream_id,
            stream_version: event.stream_version,
            global_position: event.global_position,
            event_type: event.event_type,
            metadata: event.metadata,
            recorded_at: event.recorded_at,
        }),
        Err(source) => Err(At::of(
            &event.stream_id,
            event.stream_version,
            event.global_position,
        )
        .malformed(event.event_type, event.schema_version, source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Metadata;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum E {
        Configured { gas: u32, unit: String },
        Closed,
    }
    impl DomainEvent for E {
        const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Configured", 3), ("Closed", 1)];
    }

    fn stored(event_type: &str, version: u32, payload: Value) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::nil(),
            stream_id: StreamId::new("s").unwrap(),
            stream_version: StreamVersion(1),
            global_position: GlobalPosition(7),
            event_type: event_type.into(),
            schema_version: version,
            // As a store hands it over: unparsed text.
            payload: crate::Payload::from_json_text(payload.to_string()),
            metadata: Metadata::default(),
            recorded_at: chrono::Utc::now(),
        }
    }

    fn full() -> UpcastersBuilder {
        Upcasters::builder()
            .register::<E>()
            .rename("GasSet", 1, "Configured", |p| {
                Ok(json!({ "gas": p["value"] }))
            })
            .step("Configured", 2, |mut p| {
                p["unit"] = json!("kWh");
                Ok(p)
            })
    }

    #[test]
    fn old_versions_and_renames_reach_the_current_shape() {
        let up = full().build().unwrap();
        let current = E::Configured {
            gas: 5,
            unit: "kWh".into(),
        };
        let from_v1 = up
            .decode::<E>(stored("GasSet", 1, json!({"value": 5})))
            .unwrap()
            .unwrap();
        assert_eq!(from_v1.event, current);
        assert_eq!(from_v1.event_type, "Configured");
        let from_v2 = up
            .decode::<E>(stored("Configured", 2, json!({"gas": 5})))
            .unwrap()
            .unwrap();
        assert_eq!(from_v2.event, current);
        let v3 = up
            .decode::<E>(stored("Configured", 3, json!({"gas": 5, "unit": "kWh"})))
            .unwrap()
            .unwrap();
        assert_eq!(v3.event, current);
    }

    #[test]
    fn chains_are_checked_at_build() {
        // v2 -> v3 missing.
        let missing = Upcasters::builder()
            .register::<E>()
            .step("Configured", 1, Ok)
            .build();
        assert_eq!(
            missing.err(),
            Some(UpcasterChainError::MissingStep {
                event_type: "Configured".into(),
                version: 2,
                current: 3
            })
        );
        let duplicate = full().step("Configured", 2, Ok).build();
        assert!(matches!(
            duplicate,
            Err(UpcasterChainError::DuplicateStep { version: 2, .. })
        ));
        let beyond = full().step("Configured", 3, Ok).build();
        assert!(matches!(
            beyond,
            Err(UpcasterChainError::StepFromCurrent { .. })
        ));
        let nowhere = Upcasters::builder()
            .register::<E>()
            .rename("Old", 1, "Gone", Ok)
            .build();
        assert!(matches!(
            nowhere,
            Err(UpcasterChainError::UnknownTarget { .. })
        ));
    }

    #[test]
    fn decoding_for_a_fold_agrees_with_decoding_the_whole_envelope() {
        let up = full().build().unwrap();
        let cases = [
            stored("GasSet", 1, json!({"value": 5})),
            stored("Configured", 2, json!({"gas": 5})),
            stored("Configured", 3, json!({"gas": 5, "unit": "kWh"})),
            stored("Closed", 1, json!(null)),
            stored("Mystery", 1, json!({})),
            stored("Configured", 9, json!({})),
            stored("Configured", 3, json!({"gas": "x"})),
        ];
        for event in cases {
            let stream = event.stream_id.clone();
            let whole = up
                .decode_required::<E>(event.clone())
                .map(|envelope| envelope.event);
            let fold = up.decode_fold::<E>(&stream, FoldEvent::from(event));
            assert_eq!(
                format!("{fold:?}"),
                format!("{whole:?}"),
                "the same event, or the same error naming the same place"
            );
        }
    }

    #[test]
    fn unknown_types_and_versions_are_typed_errors() {
        let up = full().build().unwrap();
        assert!(matches!(
            up.decode::<E>(stored("Mystery", 1, json!({}))),
            Err(DecodeError {
                at: EventLocation {
                    position: GlobalPosition(7),
                    ..
                },
                kind: DecodeErrorKind::UnknownEventType,
            })
        ));
        assert!(matches!(
            up.decode::<E>(stored("Configured", 9, json!({}))),
            Err(DecodeError {
                at: EventLocation {
                    schema_version: 9,
                    ..
                },
                kind: DecodeErrorKind::NoUpcastPath { current_version: 3 },
            })
        ));
        assert!(matches!(
            up.decode::<E>(stored("Configured", 3, json!({"gas": "x"}))),
            Err(DecodeError {
                kind: DecodeErrorKind::MalformedPayload(_),
                ..
            })
        ));
    }

    #[test]
    fn registered_types_an_enum_does_not_define_are_skipped() {
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        enum OnlyClosed {
            Closed,
        }
        impl DomainEvent for OnlyClosed {
            const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Closed", 1)];
        }
        let up = full().build().unwrap();
        let skipped =
            up.decode::<OnlyClosed>(stored("Configured", 3, json!({"gas": 1, "unit": "x"})));
        assert!(matches!(skipped, Ok(None)));
        assert!(matches!(
            up.decode_required::<OnlyClosed>(stored(
                "Configured",
                3,
                json!({"gas": 1, "unit": "x"})
            )),
            Err(DecodeError {
                kind: DecodeErrorKind::UnknownEventType,
                ..
            })
        ));
    }
}
