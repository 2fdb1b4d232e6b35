//! The Deal aggregate in cqrs-es terms: the same commands ([`DealCommand`]), the same rules and
//! errors ([`DealError`]), the same events with the same JSON shape as
//! [`es_examples::deal::DealEvent`] (serde's externally tagged enum: `"Created"`,
//! `{"Configured": {"fields": {...}}}`, `"Closed"`).
//!
//! A separate type is needed because cqrs-es's traits cannot be implemented for the example's
//! types here (orphan rule), and its `Aggregate::handle` is async and writes to an `EventSink`.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use es_examples::deal::{DealCommand, DealError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A deal's state, folded from its events (the same fields as `es_examples::deal::Deal`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CqrsDeal {
    /// Whether the deal was created.
    pub created: bool,
    /// Whether the deal is closed.
    pub closed: bool,
    /// Every field ever configured, the latest value of each.
    pub configuration: Map<String, Value>,
}

/// What happened to a deal: the variants of `es_examples::deal::DealEvent`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CqrsDealEvent {
    /// The deal was created.
    Created,
    /// Some fields were configured; they overwrite earlier values of the same keys.
    Configured {
        /// The fields set.
        fields: Map<String, Value>,
    },
    /// The deal was closed.
    Closed,
}

impl DomainEvent for CqrsDealEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Created => "Created",
            Self::Configured { .. } => "Configured",
            Self::Closed => "Closed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        // The schema versions of the example's registry (Configured is at version 2).
        match self {
            Self::Configured { .. } => "2",
            _ => "1",
        }
        .to_string()
    }
}

impl Aggregate for CqrsDeal {
    const TYPE: &'static str = "deal";
    type Command = DealCommand;
    type Event = CqrsDealEvent;
    type Error = DealError;
    type Services = ();

    async fn handle(
        &mut self,
        command: DealCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), DealError> {
        let event = match command {
            DealCommand::Create if self.created => return Err(DealError::AlreadyCreated),
            DealCommand::Create => CqrsDealEvent::Created,
            _ if !self.created => return Err(DealError::NotCreated),
            _ if self.closed => return Err(DealError::Closed),
            DealCommand::Configure { fields } if fields.is_empty() => {
                return Err(DealError::EmptyConfiguration)
            }
            DealCommand::Configure { fields } => CqrsDealEvent::Configured { fields },
            DealCommand::Close => CqrsDealEvent::Closed,
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: CqrsDealEvent) {
        match event {
            CqrsDealEvent::Created => self.created = true,
            CqrsDealEvent::Configured { fields } => {
                for (key, value) in fields {
                    self.configuration.insert(key, value);
                }
            }
            CqrsDealEvent::Closed => self.closed = true,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use es_examples::deal::DealEvent;
    use serde_json::json;

    #[test]
    fn events_have_the_same_json_shape_as_the_example() {
        let fields = json!({"gasConsumption": 123}).as_object().unwrap().clone();
        let pairs = [
            (CqrsDealEvent::Created, DealEvent::Created),
            (
                CqrsDealEvent::Configured {
                    fields: fields.clone(),
                },
                DealEvent::Configured { fields },
            ),
            (CqrsDealEvent::Closed, DealEvent::Closed),
        ];
        for (theirs, ours) in pairs {
            assert_eq!(
                serde_json::to_value(&theirs).unwrap(),
                serde_json::to_value(&ours).unwrap()
            );
        }
    }
}
