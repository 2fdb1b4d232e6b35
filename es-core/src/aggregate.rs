//! The [`Aggregate`] trait: commands in, events out, state folded from events.

use crate::commit::UniqueChange;
use crate::event::DomainEvent;

/// A consistency boundary whose state is the fold of its stream's events.
///
/// `handle` decides; `apply` only records what was decided (it must not fail: the event already
/// happened). A domain error from `handle` writes nothing.
///
/// ```
/// use es_core::{Aggregate, DomainEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default)]
/// struct Counter { value: u64 }
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// enum CounterEvent { Incremented { by: u64 } }
/// impl DomainEvent for CounterEvent {
///     const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Incremented", 1)];
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("increments must be positive")]
/// struct ZeroIncrement;
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = ZeroIncrement;
///
///     fn handle(&self, by: u64) -> Result<Vec<CounterEvent>, ZeroIncrement> {
///         if by == 0 { return Err(ZeroIncrement); }
///         Ok(vec![CounterEvent::Incremented { by }])
///     }
///     fn apply(&mut self, CounterEvent::Incremented { by }: &CounterEvent) {
///         self.value += by;
///     }
/// }
/// ```
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The aggregate's type name, e.g. `"deal"`; it keys snapshots.
    const TYPE: &'static str;
    /// The schema version of the aggregate's state as snapshotted. Raise it whenever the state's
    /// shape or meaning changes: older snapshots are then ignored and the stream is replayed.
    const STATE_VERSION: u32 = 1;

    /// What callers ask of it.
    type Command: Send;
    /// What it records.
    type Event: DomainEvent;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides which events a command causes, given the current state.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state.
    fn apply(&mut self, event: &Self::Event);

    /// Folds one event the caller no longer needs into the state. Loading calls this with
    /// each decoded event, which it owns: an aggregate that keeps parts of its events (strings,
    /// maps) can override it to move them in instead of cloning them in [`Aggregate::apply`].
    /// It must fold exactly as `apply` does. By default it calls `apply`.
    fn apply_owned(&mut self, event: Self::Event) {
        self.apply(&event);
    }

    /// The unique values an event claims for its stream or releases (an e-mail address across
    /// all users): the repository writes them in the same transaction as the event, and a
    /// value another stream holds refuses the command with
    /// [`StoreError::UniqueValueTaken`](crate::StoreError::UniqueValueTaken). None by default.
    ///
    /// It must depend on the event alone, so that the claims can be rebuilt from the log.
    fn unique_changes(event: &Self::Event) -> Vec<UniqueChange> {
        let _ = event;
        Vec::new()
    }
}
