//! A bank account: no overdraft, even under concurrent withdrawals. Conflicts and retries are
//! the point: two withdrawals decided on the same balance cannot both be written.

use std::collections::HashMap;

use async_trait::async_trait;
use es_core::{
    AcrossOutcome, Aggregate, CommandOptions, DomainEvent, EventEnvelope, Repository,
    RepositoryError, StreamId,
};
use es_projections::{Projector, ProjectorError, Tables};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

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
    /// A transfer from an account to itself.
    #[error("a transfer needs two different accounts")]
    SameAccount,
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

/// Moves `amount` cents from one account to another: a withdrawal and a deposit decided on both
/// accounts' current states and committed in one transaction (both or neither), each at the
/// version it was decided on; a conflict on either reloads both and decides again. With an
/// idempotency key in `options`, a retried transfer moves the money once.
pub async fn transfer(
    accounts: &Repository<Account>,
    from: &StreamId,
    to: &StreamId,
    amount: i64,
    options: CommandOptions,
) -> Result<AcrossOutcome<AccountEvent>, RepositoryError<AccountError>> {
    if from == to {
        return Err(RepositoryError::Domain(AccountError::SameAccount));
    }
    let streams = [from.clone(), to.clone()];
    accounts
        .execute_across(&streams, options, |states| {
            let withdrawn = states[0].handle(AccountCommand::Withdraw { amount })?;
            let deposited = states[1].handle(AccountCommand::Deposit { amount })?;
            Ok(vec![withdrawn, deposited])
        })
        .await
}

/// Every account stream's id starts with this.
pub const STREAM_PREFIX: &str = "account-";

/// The `account_balances` read table: each account's balance and the version it reflects.
/// Reads every account event type.
pub struct BalancesProjector;

#[async_trait]
impl Projector for BalancesProjector {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "account_balances"
    }

    fn tables(&self) -> &[&'static str] {
        &["account_balances"]
    }

    fn accepts_stream(&self, stream: &StreamId) -> bool {
        stream.as_str().starts_with(STREAM_PREFIX)
    }

    async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError> {
        let t = tables.get("account_balances")?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                 account_id text PRIMARY KEY,
                 balance bigint NOT NULL,
                 stream_version bigint NOT NULL
             )"
        ))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        events: &[EventEnvelope<AccountEvent>],
    ) -> Result<(), ProjectorError> {
        // Fold the batch per account, then one multi-row upsert.
        let mut changes: HashMap<&str, (i64, i64)> = HashMap::new();
        for e in events {
            let delta = match e.event {
                AccountEvent::Opened { .. } => 0,
                AccountEvent::Deposited { amount } => amount,
                AccountEvent::Withdrawn { amount } => -amount,
            };
            let entry = changes.entry(e.stream_id.as_str()).or_default();
            entry.0 += delta;
            entry.1 = entry.1.max(e.stream_version.0 as i64);
        }
        let (mut ids, mut deltas, mut versions) = (Vec::new(), Vec::new(), Vec::new());
        for (id, (delta, version)) in changes {
            ids.push(id.to_string());
            deltas.push(delta);
            versions.push(version);
        }
        sqlx::query(&format!(
            "INSERT INTO {t} AS b (account_id, balance, stream_version)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
             ON CONFLICT (account_id) DO UPDATE
             SET balance = b.balance + excluded.balance, stream_version = excluded.stream_version",
            t = tables.get("account_balances")?
        ))
        .bind(&ids)
        .bind(&deltas)
        .bind(&versions)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// The only event the owners directory reads. Its own enum: `Deposited` and `Withdrawn` never
/// reach it (a projector receives only the types its enum defines).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OwnerEvent {
    /// The account was opened for an owner.
    Opened {
        /// Who owns it.
        owner: String,
    },
}

impl DomainEvent for OwnerEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Opened", 1)];
}

/// The `account_owners` read table: who owns which account.
pub struct OwnersProjector;

#[async_trait]
impl Projector for OwnersProjector {
    type Event = OwnerEvent;

    fn name(&self) -> &str {
        "account_owners"
    }

    fn tables(&self) -> &[&'static str] {
        &["account_owners"]
    }

    fn accepts_stream(&self, stream: &StreamId) -> bool {
        stream.as_str().starts_with(STREAM_PREFIX)
    }

    async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError> {
        let t = tables.get("account_owners")?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (account_id text PRIMARY KEY, owner text NOT NULL)"
        ))
        .execute(&mut *conn)
        .await?;
        sqlx::query(&format!(
            "CREATE INDEX IF NOT EXISTS {t}_owner_idx ON {t} (owner)"
        ))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        events: &[EventEnvelope<OwnerEvent>],
    ) -> Result<(), ProjectorError> {
        let (ids, owners): (Vec<String>, Vec<String>) = events
            .iter()
            .map(|e| {
                let OwnerEvent::Opened { owner } = &e.event;
                (e.stream_id.to_string(), owner.clone())
            })
            .unzip();
        sqlx::query(&format!(
            "INSERT INTO {} (account_id, owner) SELECT * FROM unnest($1::text[], $2::text[])",
            tables.get("account_owners")?
        ))
        .bind(&ids)
        .bind(&owners)
        .execute(conn)
        .await?;
        Ok(())
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
