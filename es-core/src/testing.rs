//! A given / when / then harness for aggregates, so that a domain test reads as a
//! specification:
//!
//! ```
//! # use es_core::{Aggregate, DomainEvent};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Default)] struct Counter { value: u64 }
//! # #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! # enum CounterEvent { Incremented { by: u64 } }
//! # impl DomainEvent for CounterEvent {
//! #     const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Incremented", 1)];
//! # }
//! # #[derive(Debug, PartialEq, thiserror::Error)] #[error("zero")] struct Zero;
//! # impl Aggregate for Counter {
//! #     const TYPE: &'static str = "counter";
//! #     type Command = u64; type Event = CounterEvent; type Error = Zero;
//! #     fn handle(&self, by: u64) -> Result<Vec<CounterEvent>, Zero> {
//! #         if by == 0 { Err(Zero) } else { Ok(vec![CounterEvent::Incremented { by }]) }
//! #     }
//! #     fn apply(&mut self, CounterEvent::Incremented { by }: &CounterEvent) { self.value += by; }
//! # }
//! use es_core::testing::AggregateTest;
//!
//! AggregateTest::<Counter>::given([CounterEvent::Incremented { by: 1 }])
//!     .when(2)
//!     .then_events([CounterEvent::Incremented { by: 2 }]);
//! AggregateTest::<Counter>::given_nothing().when(0).then_error(Zero);
//! ```
//!
//! `when` also checks that every event the aggregate emits survives its stored JSON form.

use std::fmt::Debug;
use std::marker::PhantomData;

use crate::aggregate::Aggregate;
use crate::event::DomainEvent;

/// Entry point of the harness.
pub struct AggregateTest<A>(PhantomData<A>);

/// An aggregate with its history folded in.
pub struct Given<A> {
    state: A,
}

/// The outcome of a command, ready for assertions.
pub struct Then<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// An aggregate that has seen these events.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
        let mut state = A::default();
        for event in events {
            state.apply(&event);
        }
        Given { state }
    }

    /// A new aggregate.
    pub fn given_nothing() -> Given<A> {
        Self::given([])
    }
}

impl<A: Aggregate> Given<A> {
    /// Handles one command.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.handle(command);
        if let Ok(events) = &result {
            for event in events {
                assert_round_trips(event);
            }
        }
        Then {
            state: self.state,
            result,
        }
    }
}

fn assert_round_trips<E: DomainEvent>(event: &E) {
    let (event_type, payload) = match event.encode() {
        Ok(parts) => parts,
        Err(e) => panic!("event {event:?} cannot be encoded: {e}"),
    };
    assert!(
        E::handles(&event_type),
        "event type {event_type} is missing from EVENT_TYPES"
    );
    let back = E::decode(&event_type, payload.clone());
    let again = back.as_ref().map(|e| e.encode().ok().map(|(_, p)| p));
    assert!(
        matches!(&again, Ok(Some(p)) if *p == payload),
        "event {event:?} does not survive its stored JSON form: {back:?}"
    );
}

impl<A: Aggregate> Then<A> {
    /// Asserts the command emitted exactly these events, and returns the state with them
    /// applied (for further assertions on the aggregate).
    pub fn then_events(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq,
        A::Error: Debug,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        let mut state = self.state;
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command emitted other events");
                for event in &events {
                    state.apply(event);
                }
            }
            Err(e) => panic!("expected events {expected:?}, got the error {e:?}"),
        }
        state
    }

    /// Asserts the command failed with this error.
    pub fn then_error(self, expected: A::Error)
    where
        A::Error: PartialEq + Debug,
    {
        match self.result {
            Ok(events) => panic!("expected the error {expected:?}, got events {events:?}"),
            Err(e) => assert_eq!(e, expected),
        }
    }

    /// Asserts the command failed with an error the predicate accepts.
    pub fn then_error_matches(self, predicate: impl FnOnce(&A::Error) -> bool)
    where
        A::Error: Debug,
    {
        match self.result {
            Ok(events) => panic!("expected an error, got events {events:?}"),
            Err(e) => assert!(predicate(&e), "unexpected error {e:?}"),
        }
    }

    /// The raw result, for assertions the helpers do not cover.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }
}
