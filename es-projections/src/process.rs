//! Process managers: reactors whose effect is a command on another aggregate, executed through
//! its [`Repository`](es_core::Repository), exactly once in effect.
//!
//! A process manager is a [`Reactor`](crate::Reactor): it is delivered each event at least
//! once. Each command it executes for an event carries [`Trigger::options`]:
//! - an [`IdempotencyKey`] made of the manager's name, the triggering event's id and a step
//!   name (one event may trigger several commands), fingerprinted by the command. A delivery
//!   after a crash executes the same command with the same key: the store writes nothing and
//!   returns the first outcome (`CommandOutcome::replayed`). So there is exactly one command's
//!   events per triggering event and step, at whatever instant the process died, within the
//!   key's retention (see below for what lasts longer);
//! - metadata with the causation id set to the triggering event's id and the correlation id
//!   carried along (the trigger's own, or its id when it has none), so that the log shows which
//!   event caused which and what one request set off.
//!
//! What the key covers: a command that committed. A command the aggregate refused wrote nothing
//! and stored no key, so a later delivery decides again, possibly otherwise (money arrived
//! meanwhile). Record each decision in the process's own state (an event-sourced aggregate of
//! its own, which survives restarts), and decide from that state first: see
//! `examples/src/wire.rs`. Keys are kept for the store's idempotency retention (one day by
//! default, `PgEventStore::with_idempotency_retention`). A delivery can come later than that (a
//! dead letter retried days later): before executing, look in the target stream for an event
//! whose causation id is the trigger's (the log keeps it forever), as the wire example does.
//! A refusal leaves no key: two deliveries running at once (a process paused past its lease
//! while a standby took over) may decide differently; a domain that must exclude that records
//! refusals as events.

use es_core::{CommandOptions, EventEnvelope, IdempotencyKey, Metadata, RepositoryError};
use serde::Serialize;
use uuid::Uuid;

use crate::reactor::ReactionError;

/// The event that makes a process manager act, and what it gives each command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    manager: String,
    event_id: Uuid,
    correlation_id: Uuid,
}

impl Trigger {
    /// The trigger `event` of the manager `manager` (its reactor name).
    pub fn of<E>(manager: &str, event: &EventEnvelope<E>) -> Self {
        Self {
            manager: manager.to_string(),
            event_id: event.event_id,
            correlation_id: event.metadata.correlation_id.unwrap_or(event.event_id),
        }
    }

    /// The triggering event's id (the causation id of every command).
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }

    /// The correlation id every command carries.
    pub fn correlation_id(&self) -> Uuid {
        self.correlation_id
    }

    /// The metadata of a command this trigger causes.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id),
            causation_id: Some(self.event_id),
            actor: Some(self.manager.clone()),
            ..Metadata::default()
        }
    }

    /// The options of the command `step` (a name distinct among the commands this event
    /// triggers, e.g. `"debit"`): the metadata above, and the idempotency key
    /// `manager:event id:step` fingerprinted by `command` (any serialisable description of it).
    pub fn options<C: Serialize + ?Sized>(
        &self,
        step: &str,
        command: &C,
    ) -> Result<CommandOptions, ReactionError> {
        let key = format!("{}:{}:{step}", self.manager, self.event_id);
        let key = IdempotencyKey::for_request(key, command).map_err(ReactionError::permanent)?;
        Ok(CommandOptions {
            metadata: self.metadata(),
            idempotency_key: Some(key),
        })
    }
}

/// A repository error as a reaction error: conflicts beyond the repository's retries and
/// transient storage errors are worth retrying; the rest (an aggregate's refusal included, when
/// the manager does not handle it itself) is permanent.
pub fn reaction_error<E>(error: RepositoryError<E>) -> ReactionError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let transient = match &error {
        RepositoryError::TooManyConflicts { .. } => true,
        RepositoryError::Store(e) => e.is_transient() || e.is_conflict(),
        _ => false,
    };
    if transient {
        ReactionError::transient(error)
    } else {
        ReactionError::permanent(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use es_core::{GlobalPosition, StreamId, StreamVersion};

    fn envelope(correlation: Option<Uuid>) -> EventEnvelope<()> {
        EventEnvelope {
            event: (),
            event_id: Uuid::from_u128(7),
            stream_id: StreamId::new("wire-1").unwrap_or_else(|_| unreachable!()),
            stream_version: StreamVersion(1),
            global_position: GlobalPosition(3),
            event_type: "Requested".into(),
            metadata: Metadata {
                correlation_id: correlation,
                ..Metadata::default()
            },
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn commands_carry_causation_correlation_and_a_key_per_step() -> Result<(), ReactionError> {
        let root = Uuid::from_u128(1);
        let trigger = Trigger::of("wires", &envelope(Some(root)));
        let debit = trigger.options("debit", &("withdraw", 5))?;
        assert_eq!(debit.metadata.causation_id, Some(Uuid::from_u128(7)));
        assert_eq!(debit.metadata.correlation_id, Some(root));
        let key = debit.idempotency_key.as_ref().map(|k| k.key().to_string());
        assert_eq!(
            key.as_deref(),
            Some("wires:00000000-0000-0000-0000-000000000007:debit")
        );
        let again = trigger.options("debit", &("withdraw", 5))?;
        assert_eq!(debit.idempotency_key, again.idempotency_key);
        let other = trigger.options("credit", &("withdraw", 5))?;
        assert_ne!(debit.idempotency_key, other.idempotency_key);
        // Without a correlation id, the trigger starts the chain.
        let first = Trigger::of("wires", &envelope(None));
        assert_eq!(first.correlation_id(), Uuid::from_u128(7));
        Ok(())
    }
}
