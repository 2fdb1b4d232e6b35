//! A user whose e-mail address is unique across all users: the address is claimed in the same
//! transaction as the event that sets it and released by the one that changes it, so two users
//! can never register or switch to one address, however they race.

use es_core::{Aggregate, DomainEvent, UniqueChange};
use serde::{Deserialize, Serialize};

/// The scope of e-mail addresses among unique values.
pub const EMAIL_SCOPE: &str = "user-email";

/// A user's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// The address, once registered.
    pub email: Option<String>,
}

/// What happened to a user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    /// Registered with an address.
    Registered {
        /// The address (normalised: lower case, trimmed).
        email: String,
    },
    /// Moved to another address.
    EmailChanged {
        /// The address given up.
        old: String,
        /// The address taken.
        new: String,
    },
}

impl DomainEvent for UserEvent {
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Registered", 1), ("EmailChanged", 1)];
}

/// What callers ask of a user.
#[derive(Clone, Debug, Serialize)]
pub enum UserCommand {
    /// Register with an address.
    Register {
        /// The address.
        email: String,
    },
    /// Change the address.
    ChangeEmail {
        /// The new address.
        email: String,
    },
}

/// Why a user refuses a command (a taken address is the store's answer:
/// [`es_core::StoreError::UniqueValueTaken`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// Registering twice.
    #[error("the user is already registered")]
    AlreadyRegistered,
    /// Changing the address of a user never registered.
    #[error("the user is not registered")]
    NotRegistered,
    /// Not an address.
    #[error("{0:?} is not an e-mail address")]
    InvalidEmail(String),
}

fn normalise(email: &str) -> Result<String, UserError> {
    let email = email.trim().to_lowercase();
    if email.len() < 3 || !email.contains('@') || email.len() > 255 {
        return Err(UserError::InvalidEmail(email));
    }
    Ok(email)
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;

    fn handle(&self, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        match (command, &self.email) {
            (UserCommand::Register { .. }, Some(_)) => Err(UserError::AlreadyRegistered),
            (UserCommand::Register { email }, None) => Ok(vec![UserEvent::Registered {
                email: normalise(&email)?,
            }]),
            (UserCommand::ChangeEmail { .. }, None) => Err(UserError::NotRegistered),
            (UserCommand::ChangeEmail { email }, Some(old)) => {
                let new = normalise(&email)?;
                if &new == old {
                    return Ok(Vec::new());
                }
                Ok(vec![UserEvent::EmailChanged {
                    old: old.clone(),
                    new,
                }])
            }
        }
    }

    fn apply(&mut self, event: &UserEvent) {
        match event {
            UserEvent::Registered { email } => self.email = Some(email.clone()),
            UserEvent::EmailChanged { new, .. } => self.email = Some(new.clone()),
        }
    }

    fn unique_changes(event: &UserEvent) -> Vec<UniqueChange> {
        match event {
            UserEvent::Registered { email } => vec![UniqueChange::claim(EMAIL_SCOPE, email)],
            UserEvent::EmailChanged { old, new } => vec![
                UniqueChange::release(EMAIL_SCOPE, old),
                UniqueChange::claim(EMAIL_SCOPE, new),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use es_core::{InMemoryStore, Repository, RepositoryError, StoreError, StreamId};

    #[tokio::test]
    async fn an_address_has_one_holder_and_is_freed_by_a_change() {
        let users = Repository::<User>::new(InMemoryStore::new());
        let (ann, bob) = (
            StreamId::new("user-ann").unwrap(),
            StreamId::new("user-bob").unwrap(),
        );
        let register = |email: &str| UserCommand::Register {
            email: email.into(),
        };
        users
            .execute(&ann, register("Ann@Example.com"))
            .await
            .unwrap();
        match users.execute(&bob, register("ann@example.com ")).await {
            Err(RepositoryError::Store(StoreError::UniqueValueTaken { holder, .. })) => {
                assert_eq!(holder, ann)
            }
            other => panic!("the address is taken: {other:?}"),
        }
        let change = UserCommand::ChangeEmail {
            email: "ann@work.example".into(),
        };
        users.execute(&ann, change).await.unwrap();
        users
            .execute(&bob, register("ann@example.com"))
            .await
            .unwrap();
        assert_eq!(
            users.load(&bob).await.unwrap().state.email.as_deref(),
            Some("ann@example.com")
        );
    }
}
