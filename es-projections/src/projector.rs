//! The [`Projector`] trait: events in, read-table rows out.
//!
//! A projector writes only through the connection it is given: the runtime opens a transaction,
//! calls [`Projector::apply`] with a batch, writes the checkpoint in the same transaction, and
//! commits. A crash anywhere rolls back both, so the effect is exactly once.
//!
//! Tables: a projector declares its logical table names and creates them in `setup` under the
//! physical names [`Tables`] gives (`deals` becomes `deals_g1`, `deals_g2`, ... one per
//! generation). Readers query a view with the logical name, which the runtime points at the live
//! generation; a shadow rebuild fills the next generation and switches the views atomically.

use async_trait::async_trait;
use es_core::{DomainEvent, EventEnvelope};
use sqlx::PgConnection;

use crate::error::{InvalidName, ProjectorError};

/// Builds read tables from events.
///
/// ```
/// use async_trait::async_trait;
/// use es_core::{DomainEvent, EventEnvelope};
/// use es_projections::{Projector, ProjectorError, Tables};
/// use serde::{Deserialize, Serialize};
/// use sqlx::PgConnection;
///
/// #[derive(Clone, Debug, Serialize, Deserialize)]
/// enum AccountEvent { Deposited { amount: i64 } }
/// impl DomainEvent for AccountEvent {
///     const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Deposited", 1)];
/// }
///
/// struct Balances;
///
/// #[async_trait]
/// impl Projector for Balances {
///     type Event = AccountEvent;
///     fn name(&self) -> &str { "balances" }
///     fn tables(&self) -> &[&'static str] { &["balances"] }
///
///     async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError> {
///         let sql = format!(
///             "CREATE TABLE IF NOT EXISTS {} (account text PRIMARY KEY, balance bigint NOT NULL)",
///             tables.get("balances")?
///         );
///         sqlx::query(&sql).execute(conn).await?;
///         Ok(())
///     }
///
///     async fn apply(
///         &self,
///         conn: &mut PgConnection,
///         tables: &Tables,
///         events: &[EventEnvelope<AccountEvent>],
///     ) -> Result<(), ProjectorError> {
///         let sql = format!(
///             "INSERT INTO {0} AS b VALUES ($1, $2)
///              ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance",
///             tables.get("balances")?
///         );
///         for e in events {
///             let AccountEvent::Deposited { amount } = &e.event;
///             sqlx::query(&sql).bind(e.stream_id.as_str()).bind(amount).execute(&mut *conn).await?;
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// The events it reads: events of types this enum does not define are not delivered.
    type Event: DomainEvent;

    /// The version of this projector's code. Raise it whenever `setup` or `apply` would build
    /// different rows from the same events (a new column, a fixed computation), and deploy it with
    /// a blue/green rebuild (`rebuild NAME --shadow`, then `switch NAME`): each generation
    /// records the version it is built by, and a worker applies only generations of its own
    /// version, so old and new binaries can run at once, in any order, each keeping its own
    /// generation caught up. Leave it alone for changes that build the same rows.
    const VERSION: u32 = 1;

    /// A stable name: it keys the checkpoint. 1 to 40 lowercase letters, digits and
    /// underscores, starting with a letter.
    fn name(&self) -> &str;

    /// The logical names of the tables it owns (same rules as the name). Readers query views
    /// with these names.
    fn tables(&self) -> &[&'static str];

    /// Whether events of this stream are for this projector. Event type names are shared by the
    /// whole log (two aggregates may both have a `Closed`): a projector that reads one kind of
    /// aggregate names its streams here, e.g. `stream.as_str().starts_with("deal-")`. Events of
    /// other streams are skipped before they are decoded. Default: every stream.
    fn accepts_stream(&self, stream: &es_core::StreamId) -> bool {
        let _ = stream;
        true
    }

    /// Creates the tables (idempotently: `CREATE TABLE IF NOT EXISTS`) under the physical names
    /// in `tables`.
    async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError>;

    /// Applies a batch of events, in delivery order, inside the runtime's transaction.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        events: &[EventEnvelope<Self::Event>],
    ) -> Result<(), ProjectorError>;

    /// Empties the tables for a rebuild. The default truncates every table in `tables`.
    async fn reset(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError> {
        for (_, physical) in tables.iter() {
            sqlx::query(&format!("TRUNCATE {physical}"))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// Checks a projection or table name: it is interpolated into SQL, so only a safe alphabet
/// passes.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    let mut chars = name.chars();
    let valid = (1..=40).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(InvalidName {
            kind,
            name: name.to_string(),
        })
    }
}

/// The physical names of a projector's tables for one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    generation: i32,
    names: Vec<(String, String)>,
}

/// A logical table name the projector did not declare in [`Projector::tables`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("table {0} is not declared in Projector::tables")]
pub struct UndeclaredTable(pub String);

impl Tables {
    /// The names for `generation` of these logical tables (already validated).
    pub fn new(logical: &[&str], generation: i32) -> Result<Self, InvalidName> {
        let names = logical
            .iter()
            .map(|name| {
                validate_name("table", name)?;
                Ok((name.to_string(), format!("{name}_g{generation}")))
            })
            .collect::<Result<_, InvalidName>>()?;
        Ok(Self { generation, names })
    }

    /// The physical name of a logical table.
    pub fn get(&self, logical: &str) -> Result<&str, UndeclaredTable> {
        self.names
            .iter()
            .find(|(l, _)| l == logical)
            .map(|(_, p)| p.as_str())
            .ok_or_else(|| UndeclaredTable(logical.to_string()))
    }

    /// (logical, physical) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.names.iter().map(|(l, p)| (l.as_str(), p.as_str()))
    }

    /// The generation.
    pub fn generation(&self) -> i32 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("projection", "deals").is_ok());
        assert!(validate_name("projection", "deals_v2").is_ok());
        for bad in ["", "Deals", "1deals", "deals;drop", "dé", &"x".repeat(41)] {
            assert!(validate_name("projection", bad).is_err(), "{bad}");
        }
        let t = Tables::new(&["deals"], 3).unwrap();
        assert_eq!(t.get("deals").unwrap(), "deals_g3");
        assert!(t.get("other").is_err());
        assert!(Tables::new(&["bad name"], 1).is_err());
    }
}
