//! The cart: commands in, events out, state folded from the events.

use es_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// What a customer asks of a cart.
#[derive(Clone, Debug)]
pub enum CartCommand {
    /// Put `quantity` of a product in the cart.
    AddItem { sku: String, quantity: u32 },
    /// Pay: the cart takes no more items.
    CheckOut,
}

/// What happened to a cart. These are stored as JSON, forever: change them with care.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CartEvent {
    /// Items were added.
    ItemAdded { sku: String, quantity: u32 },
    /// The cart was paid.
    CheckedOut,
}

impl DomainEvent for CartEvent {
    /// Each event type with its schema version (raise it when its shape changes).
    const EVENT_TYPES: &'static [(&'static str, u32)] = &[("ItemAdded", 1), ("CheckedOut", 1)];
}

/// Why a cart refuses a command.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CartError {
    /// Adding nothing.
    #[error("add at least one item")]
    ZeroQuantity,
    /// Checking out an empty cart.
    #[error("the cart is empty")]
    Empty,
    /// Any command after the checkout.
    #[error("the cart is already checked out")]
    CheckedOut,
}

/// A cart's state: only what its decisions need.
#[derive(Debug, Default)]
pub struct Cart {
    /// Items in the cart.
    pub items: u32,
    /// Paid.
    pub checked_out: bool,
}

impl Aggregate for Cart {
    const TYPE: &'static str = "cart";
    type Command = CartCommand;
    type Event = CartEvent;
    type Error = CartError;

    fn handle(&self, command: CartCommand) -> Result<Vec<CartEvent>, CartError> {
        if self.checked_out {
            return Err(CartError::CheckedOut);
        }
        match command {
            CartCommand::AddItem { quantity: 0, .. } => Err(CartError::ZeroQuantity),
            CartCommand::AddItem { sku, quantity } => {
                Ok(vec![CartEvent::ItemAdded { sku, quantity }])
            }
            CartCommand::CheckOut if self.items == 0 => Err(CartError::Empty),
            CartCommand::CheckOut => Ok(vec![CartEvent::CheckedOut]),
        }
    }

    fn apply(&mut self, event: &CartEvent) {
        match event {
            CartEvent::ItemAdded { quantity, .. } => self.items += quantity,
            CartEvent::CheckedOut => self.checked_out = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use es_core::testing::AggregateTest;
    use es_core::{InMemoryStore, Repository, RepositoryError, StreamId};

    fn apples(quantity: u32) -> CartEvent {
        CartEvent::ItemAdded {
            sku: "apple".into(),
            quantity,
        }
    }

    #[test]
    fn an_empty_cart_cannot_check_out() {
        AggregateTest::<Cart>::given_nothing()
            .when(CartCommand::CheckOut)
            .then_error(CartError::Empty);
    }

    #[test]
    fn a_cart_with_items_checks_out_once() {
        AggregateTest::<Cart>::given([apples(2)])
            .when(CartCommand::CheckOut)
            .then_events([CartEvent::CheckedOut]);
        AggregateTest::<Cart>::given([apples(2), CartEvent::CheckedOut])
            .when(CartCommand::AddItem {
                sku: "pear".into(),
                quantity: 1,
            })
            .then_error(CartError::CheckedOut);
    }

    #[tokio::test]
    async fn the_repository_stores_what_the_cart_decided() {
        let carts = Repository::<Cart>::new(InMemoryStore::new());
        let id = StreamId::new("cart-1").unwrap();
        let add = CartCommand::AddItem {
            sku: "apple".into(),
            quantity: 3,
        };
        carts.execute(&id, add).await.unwrap();
        carts.execute(&id, CartCommand::CheckOut).await.unwrap();

        let refused = carts.execute(&id, CartCommand::CheckOut).await;
        assert!(matches!(
            refused,
            Err(RepositoryError::Domain(CartError::CheckedOut))
        ));
        let cart = carts.load(&id).await.unwrap();
        assert_eq!(
            (cart.state.items, cart.state.checked_out, cart.version.0),
            (3, true, 2)
        );
    }
}
