//! A shop's carts, event-sourced: the aggregate and the read table of every cart.

pub mod cart;
pub mod carts_table;

/// Every event type this application writes, for the worker and the repository.
pub fn upcasters() -> es_core::Upcasters {
    es_core::Upcasters::of::<cart::CartEvent>()
}
