//! Examples for the framework: [`deal`] (the CRM deal case end to end: aggregate, upcaster,
//! read model, workload generator) and [`bank`] (an account with no overdraft under concurrent
//! withdrawals).

pub mod bank;
pub mod deal;

/// The event registry of a database holding both examples' events: every event type in the
/// log must be registered, or a worker stops on it (even a projector that ignores it).
pub fn upcasters() -> es_core::Upcasters {
    let builder = deal::register(es_core::Upcasters::builder()).register::<bank::AccountEvent>();
    // The registry is static and checked by the tests: building it cannot fail.
    match builder.build() {
        Ok(upcasters) => upcasters,
        Err(error) => panic!("the examples' upcaster chains are inconsistent: {error}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_registries_build() {
        assert!(super::upcasters().current_version("Opened").is_some());
        assert_eq!(
            super::deal::upcasters().current_version("Configured"),
            Some(2)
        );
    }
}
