//! A wire transfer as a process: debit one account, credit the other, and refund the debit when
//! the credit is refused. Unlike [`bank::transfer`](crate::bank::transfer), which commits both
//! sides in one transaction, the steps here are separate commands, as they would be between two
//! services (or two banks): the [`WireProcess`] manager reacts to each step's event with the
//! next command.
//!
//! What makes it exactly once in effect, step by step: the record of a step on the wire is the
//! last thing a reaction does, so a delivery whose trigger the wire has passed does nothing; an
//! account command already caused by the trigger (found in the account's stream by its
//! causation id, which the log keeps forever) is not executed again; and a command racing
//! another delivery of the same trigger is deduplicated by its idempotency key. One case is
//! left, and it belongs to the domain: a refusal writes nothing, so two deliveries running at
//! once (a process paused past its lease while a standby took over) may decide one refused and
//! one accepted. A domain that must exclude that records refusals as events of the account
//! (`DepositRefused`), which the key then replays.
//!
//! The process's state is an event-sourced aggregate of its own, [`Wire`] (stream
//! `wire-<id>`), so it survives restarts: each step's outcome is recorded on the wire before the
//! next step starts. Each command the manager executes carries an idempotency key made of the
//! triggering event's id and the step ([`Trigger::options`]), so a delivery after a crash
//! (between the account command and the wire's record, or before the checkpoint) executes
//! nothing twice: exactly one command's events per triggering event (see below for the one
//! case this needs the domain's help with).

use std::sync::Arc;

use async_trait::async_trait;
use es_core::{
    Aggregate, DomainEvent, EventEnvelope, Repository, RepositoryError, StreamId, StreamVersion,
};
use es_projections::process::{reaction_error, Trigger};
use es_projections::{ReactionError, Reactor};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::bank::{Account, AccountCommand};

/// Every wire stream's id starts with this.
pub const STREAM_PREFIX: &str = "wire-";

/// The reactor name of the process manager (it keys its checkpoint).
pub const MANAGER: &str = "wires";

/// Where a wire stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireState {
    /// Not requested yet.
    #[default]
    New,
    /// Requested: the debit is next.
    Requested,
    /// The source account was debited: the credit is next.
    Debited,
    /// The target account was credited: done.
    Completed,
    /// The source account refused the debit: done, nothing moved.
    DebitRefused,
    /// The target account refused the credit: the refund is next.
    CreditRefused,
    /// The debit was paid back: done, nothing moved.
    Refunded,
}

/// A wire's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Wire {
    /// Where it stands.
    pub state: WireState,
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// Cents.
    pub amount: i64,
}

/// What happened to a wire. The type names carry a `Wire` prefix: event type names are shared
/// by the whole log, and the bank's accounts have their own `Deposited`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireEvent {
    /// Someone asked to move money.
    #[serde(rename = "WireRequested")]
    Requested {
        /// The account to debit.
        from: String,
        /// The account to credit.
        to: String,
        /// Cents.
        amount: i64,
    },
    /// The source account was debited.
    #[serde(rename = "WireDebited")]
    Debited,
    /// The source account refused the debit.
    #[serde(rename = "WireDebitRefused")]
    DebitRefused {
        /// Why.
        reason: String,
    },
    /// The target account was credited.
    #[serde(rename = "WireCredited")]
    Credited,
    /// The target account refused the credit.
    #[serde(rename = "WireCreditRefused")]
    CreditRefused {
        /// Why.
        reason: String,
    },
    /// The debit was paid back.
    #[serde(rename = "WireRefunded")]
    Refunded,
}

impl DomainEvent for WireEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[
        ("WireRequested", 1),
        ("WireDebited", 1),
        ("WireDebitRefused", 1),
        ("WireCredited", 1),
        ("WireCreditRefused", 1),
        ("WireRefunded", 1),
    ];
}

/// What is asked of a wire: by a user ([`WireCommand::Request`]) or by the process manager
/// (the outcome of each step).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum WireCommand {
    /// Move `amount` cents from one account to another.
    Request {
        /// The account stream to debit.
        from: String,
        /// The account stream to credit.
        to: String,
        /// Cents, positive.
        amount: i64,
    },
    /// The debit happened.
    RecordDebit,
    /// The debit was refused.
    RefuseDebit {
        /// Why.
        reason: String,
    },
    /// The credit happened.
    RecordCredit,
    /// The credit was refused.
    RefuseCredit {
        /// Why.
        reason: String,
    },
    /// The refund happened.
    RecordRefund,
}

/// Why a wire refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A step recorded out of order (or twice).
    #[error("a wire in state {state:?} cannot take {command}")]
    OutOfOrder {
        /// The wire's state.
        state: WireState,
        /// The command's name.
        command: &'static str,
    },
    /// A zero or negative amount, or the same account twice.
    #[error("invalid wire: {0}")]
    Invalid(&'static str),
}

impl Aggregate for Wire {
    const TYPE: &'static str = "wire";
    type Command = WireCommand;
    type Event = WireEvent;
    type Error = WireError;

    fn handle(&self, command: WireCommand) -> Result<Vec<WireEvent>, WireError> {
        use WireState as S;
        let out_of_order = |command| {
            Err(WireError::OutOfOrder {
                state: self.state.clone(),
                command,
            })
        };
        match (&self.state, command) {
            (S::New, WireCommand::Request { amount, .. }) if amount <= 0 => {
                Err(WireError::Invalid("amounts must be positive"))
            }
            (S::New, WireCommand::Request { from, to, .. }) if from == to => {
                Err(WireError::Invalid("a wire needs two different accounts"))
            }
            (S::New, WireCommand::Request { from, to, amount }) => {
                Ok(vec![WireEvent::Requested { from, to, amount }])
            }
            (S::Requested, WireCommand::RecordDebit) => Ok(vec![WireEvent::Debited]),
            (S::Requested, WireCommand::RefuseDebit { reason }) => {
                Ok(vec![WireEvent::DebitRefused { reason }])
            }
            (S::Debited, WireCommand::RecordCredit) => Ok(vec![WireEvent::Credited]),
            (S::Debited, WireCommand::RefuseCredit { reason }) => {
                Ok(vec![WireEvent::CreditRefused { reason }])
            }
            (S::CreditRefused, WireCommand::RecordRefund) => Ok(vec![WireEvent::Refunded]),
            (_, WireCommand::Request { .. }) => out_of_order("Request"),
            (_, WireCommand::RecordDebit) => out_of_order("RecordDebit"),
            (_, WireCommand::RefuseDebit { .. }) => out_of_order("RefuseDebit"),
            (_, WireCommand::RecordCredit) => out_of_order("RecordCredit"),
            (_, WireCommand::RefuseCredit { .. }) => out_of_order("RefuseCredit"),
            (_, WireCommand::RecordRefund) => out_of_order("RecordRefund"),
        }
    }

    fn apply(&mut self, event: &WireEvent) {
        self.state = match event {
            WireEvent::Requested { from, to, amount } => {
                self.from = from.clone();
                self.to = to.clone();
                self.amount = *amount;
                WireState::Requested
            }
            WireEvent::Debited => WireState::Debited,
            WireEvent::DebitRefused { .. } => WireState::DebitRefused,
            WireEvent::Credited => WireState::Completed,
            WireEvent::CreditRefused { .. } => WireState::CreditRefused,
            WireEvent::Refunded => WireState::Refunded,
        };
    }
}

/// A point in the process where a test can stop it (a crash): called with the step's name, the
/// wire and the version of the wire event that triggered the reaction.
pub type StepHook =
    Arc<dyn Fn(&'static str, &StreamId, StreamVersion) -> BoxFuture<'static, ()> + Send + Sync>;

/// The process manager: reacts to each wire event with the next command. Run it in a worker
/// (`Worker::reactor`).
pub struct WireProcess {
    accounts: Repository<Account>,
    wires: Repository<Wire>,
    hook: Option<StepHook>,
}

impl WireProcess {
    /// The manager, executing commands through these repositories.
    pub fn new(accounts: Repository<Account>, wires: Repository<Wire>) -> Self {
        Self {
            accounts,
            wires,
            hook: None,
        }
    }

    /// Calls `hook` at each step (`after_event`, `after_command`, `after_record`), for tests
    /// that stop the process there.
    pub fn with_hook(mut self, hook: StepHook) -> Self {
        self.hook = Some(hook);
        self
    }

    async fn step(&self, name: &'static str, trigger: &EventEnvelope<WireEvent>) {
        if let Some(hook) = &self.hook {
            hook(name, &trigger.stream_id, trigger.stream_version).await;
        }
    }

    /// Executes `command` on the account `account` as step `step` of `trigger`; the account's
    /// refusal is an outcome (`Ok(Err(reason))`), not a failure.
    async fn on_account(
        &self,
        trigger: &Trigger,
        step: &str,
        account: &str,
        command: AccountCommand,
    ) -> Result<Result<(), String>, ReactionError> {
        let stream = StreamId::new(account).map_err(ReactionError::permanent)?;
        let amount = match &command {
            AccountCommand::Deposit { amount } | AccountCommand::Withdraw { amount } => *amount,
            AccountCommand::Open { .. } => 0,
        };
        // The log keeps what the idempotency key keeps only for its retention: an account event
        // caused by this trigger means the step is done, however late the delivery comes (a
        // dead letter retried days later).
        let caused = self
            .accounts
            .store()
            .read_stream(&stream, StreamVersion(0), None)
            .await
            .map_err(ReactionError::transient)?
            .iter()
            .any(|e| e.metadata.causation_id == Some(trigger.event_id()));
        if caused {
            return Ok(Ok(()));
        }
        let description = (step, account, amount);
        let options = trigger.options(step, &description)?;
        match self.accounts.execute_with(&stream, command, options).await {
            Ok(_) => Ok(Ok(())),
            Err(RepositoryError::Domain(refused)) => Ok(Err(refused.to_string())),
            Err(error) => Err(reaction_error(error)),
        }
    }
}

#[async_trait]
impl Reactor for WireProcess {
    type Event = WireEvent;

    fn name(&self) -> &str {
        MANAGER
    }

    fn accepts_stream(&self, stream: &StreamId) -> bool {
        stream.as_str().starts_with(STREAM_PREFIX)
    }

    async fn react(
        &self,
        event: &EventEnvelope<WireEvent>,
        _attempt: u32,
    ) -> Result<(), ReactionError> {
        let wire_stream = &event.stream_id;
        let wire = self.wires.load(wire_stream).await.map_err(reaction_error)?;
        // The record of this step is the last thing a reaction does: a wire already past the
        // trigger was handled by an earlier delivery.
        if wire.version > event.stream_version {
            return Ok(());
        }
        self.step("after_event", event).await;
        let trigger = Trigger::of(MANAGER, event);
        let wire = wire.state;
        let next = match &event.event {
            WireEvent::Requested { from, amount, .. } => {
                let withdraw = AccountCommand::Withdraw { amount: *amount };
                match self.on_account(&trigger, "debit", from, withdraw).await? {
                    Ok(()) => WireCommand::RecordDebit,
                    Err(reason) => WireCommand::RefuseDebit { reason },
                }
            }
            WireEvent::Debited => {
                let deposit = AccountCommand::Deposit {
                    amount: wire.amount,
                };
                match self
                    .on_account(&trigger, "credit", &wire.to, deposit)
                    .await?
                {
                    Ok(()) => WireCommand::RecordCredit,
                    Err(reason) => WireCommand::RefuseCredit { reason },
                }
            }
            WireEvent::CreditRefused { .. } => {
                let refund = AccountCommand::Deposit {
                    amount: wire.amount,
                };
                match self
                    .on_account(&trigger, "refund", &wire.from, refund)
                    .await?
                {
                    Ok(()) => WireCommand::RecordRefund,
                    Err(reason) => {
                        // The debited account refuses its own money back: an operator's case
                        // (the event is parked and the wire waits).
                        return Err(ReactionError::permanent(format!(
                            "the refund of wire {wire_stream} was refused: {reason}"
                        )));
                    }
                }
            }
            WireEvent::DebitRefused { .. } | WireEvent::Credited | WireEvent::Refunded => {
                return Ok(())
            }
        };
        self.step("after_command", event).await;
        let options = trigger.options("record", &next)?;
        self.wires
            .execute_with(wire_stream, next, options)
            .await
            .map_err(reaction_error)?;
        self.step("after_record", event).await;
        Ok(())
    }
}
