//! `es-core`: the event-sourcing model, with no database in it.
//!
//! An application implements [`Aggregate`] (commands in, events out, state folded from events)
//! over an event enum that implements [`DomainEvent`]. A [`Repository`] loads aggregates from an
//! [`EventStore`], executes commands with optimistic concurrency ([`ExpectedVersion`]), retries
//! conflicts under a bounded [`RetryPolicy`], upcasts stored events of older schema versions
//! ([`Upcasters`]) and, if asked, starts from snapshots ([`SnapshotStore`]).
//!
//! ```
//! use es_core::{Aggregate, DomainEvent, InMemoryStore, Repository, StreamId};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default)]
//! struct Account { balance: i64 }
//!
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! enum AccountEvent { Deposited { amount: i64 }, Withdrawn { amount: i64 } }
//! impl DomainEvent for AccountEvent {
//!     const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Deposited", 1), ("Withdrawn", 1)];
//! }
//!
//! #[derive(Clone)]
//! enum AccountCommand { Deposit(i64), Withdraw(i64) }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("insufficient funds")]
//! struct InsufficientFunds;
//!
//! impl Aggregate for Account {
//!     const TYPE: &'static str = "account";
//!     type Command = AccountCommand;
//!     type Event = AccountEvent;
//!     type Error = InsufficientFunds;
//!
//!     fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, InsufficientFunds> {
//!         match command {
//!             AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
//!             AccountCommand::Withdraw(amount) if amount > self.balance => Err(InsufficientFunds),
//!             AccountCommand::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
//!         }
//!     }
//!
//!     fn apply(&mut self, event: &AccountEvent) {
//!         match event {
//!             AccountEvent::Deposited { amount } => self.balance += amount,
//!             AccountEvent::Withdrawn { amount } => self.balance -= amount,
//!         }
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let accounts = Repository::<Account>::new(InMemoryStore::new());
//! let id = StreamId::new("account-1").unwrap();
//! accounts.execute(&id, AccountCommand::Deposit(100)).await.unwrap();
//! assert!(accounts.execute(&id, AccountCommand::Withdraw(500)).await.is_err());
//! assert_eq!(accounts.load(&id).await.unwrap().state.balance, 100);
//! # });
//! ```
//!
//! Modules, in reading order: [`stream`] (ids and numbers), [`event`], [`aggregate`], [`store`], [`commit`],
//! [`repository`], [`upcast`], [`snapshot`], [`memory`], and with the `testing` feature
//! `testing` (given / when / then) and `conformance` (the store conformance suite).

pub mod aggregate;
pub mod commit;
pub mod error;
pub mod event;
pub mod memory;
pub mod payload;
pub mod repository;
pub mod snapshot;
pub mod store;
pub mod stream;
pub mod upcast;

#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "testing")]
pub mod testing;

pub use aggregate::Aggregate;
pub use commit::{
    Commit, Committed, CommittedStream, IdempotencyKey, StreamAppend, UniqueChange, MAX_KEY_BYTES,
};
pub use error::{
    BoxError, DecodeError, DecodeErrorKind, EncodeError, EventLocation, RepositoryError, StoreError,
};
pub use event::{DomainEvent, EventData, FoldEvent, Metadata, RecordedEvent};
pub use memory::InMemoryStore;
pub use payload::Payload;
pub use repository::{
    AcrossOutcome, CommandOptions, CommandOutcome, Decision, Loaded, Repository, RetryPolicy,
    StreamOutcome, DEFAULT_CACHE_CAPACITY,
};
pub use snapshot::{Snapshot, SnapshotPolicy, SnapshotStore, SnapshotWrite, StateSource};
pub use store::{AppendResult, EventStore, StoreLimits};
pub use stream::{
    escape_for_display, ExpectedVersion, GlobalPosition, InvalidStreamId, StreamId, StreamVersion,
};
pub use upcast::{EventEnvelope, UpcastFn, UpcasterChainError, Upcasters, UpcastersBuilder};
