//! A bank account: no overdraft, even under concurrent withdrawals. Conflicts and retries are
//! the point: two withdrawals decided on the same balance cannot both be written.

use es_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// An account's state: the balance in cents, and whether it is open.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Whether the account was opened.
    pub open: bool,
    /// The balance in cents.
    pub balance: i64,
}

/// What happened to an account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// The account was opened for an owner.
    Opened {
        /// Who owns it.
        owner: String,
    },
    /// Money came in.
    Deposited {
        /// Cents.
        amount: i64,
    },
    /// Money went out.
    Withdrawn {
        /// Cents.
        amount: i64,
    },
}

impl DomainEvent for AccountEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] =
        &[("Opened", 1), ("Deposited", 1), ("Withdrawn", 1)];
}

/// What callers ask of an account.
#[derive(Clone, Debug)]
pub enum AccountCommand {
    /// Open it.
    Open {
        /// Who owns it.
        owner: String,
    },
    /// Put money in.
    Deposit {
        /// Cents, positive.
        amount: i64,
    },
    /// Take money out, never below zero.
    Withdraw {
        /// Cents, positive.
        amount: i64,
    },
}

/// Why an account refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Opening an account twice.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Using an account that was never opened.
    #[error("the account is not open")]
    NotOpen,
    /// A zero or negative amount.
    #[error("amounts must be positive, got {0}")]
    InvalidAmount(i64),
    /// A withdrawal larger than the balance.
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds {
        /// The balance.
        balance: i64,
        /// The amount asked for.
        asked: i64,
    },
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open { owner } => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit { amount } | AccountCommand::Withdraw { amount }
                if amount <= 0 =>
            {
                Err(AccountError::InvalidAmount(amount))
            }
            AccountCommand::Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw { amount } if amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    asked: amount,
                })
            }
            AccountCommand::Withdraw { amount } => Ok(vec![AccountEvent::Withdrawn { amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use es_core::testing::AggregateTest;

    fn opened() -> AccountEvent {
        AccountEvent::Opened {
            owner: "ann".into(),
        }
    }

    #[test]
    fn deposits_need_an_open_account() {
        AggregateTest::<Account>::given_nothing()
            .when(AccountCommand::Deposit { amount: 5 })
            .then_error(AccountError::NotOpen);
        AggregateTest::<Account>::given([opened()])
            .when(AccountCommand::Deposit { amount: 5 })
            .then_events([AccountEvent::Deposited { amount: 5 }]);
    }

    #[test]
    fn no_overdraft() {
        AggregateTest::<Account>::given([opened(), AccountEvent::Deposited { amount: 10 }])
            .when(AccountCommand::Withdraw { amount: 11 })
            .then_error(AccountError::InsufficientFunds {
                balance: 10,
                asked: 11,
            });
        AggregateTest::<Account>::given([opened(), AccountEvent::Deposited { amount: 10 }])
            .when(AccountCommand::Withdraw { amount: 10 })
            .then_events([AccountEvent::Withdrawn { amount: 10 }]);
    }

    #[test]
    fn amounts_must_be_positive() {
        AggregateTest::<Account>::given([opened()])
            .when(AccountCommand::Withdraw { amount: 0 })
            .then_error(AccountError::InvalidAmount(0));
    }
}
