//! Examples for the framework: [`deal`] (the CRM deal case end to end: aggregate, upcaster,
//! read model, workload generator), [`bank`] (an account with no overdraft under concurrent
//! withdrawals, and transfers committed across two accounts), [`users`] (an e-mail address
//! unique across users) and [`wire`] (a transfer run as a process by a process manager, with a
//! refund when the credit is refused).

pub mod bank;
pub mod deal;
pub mod users;
pub mod wire;

/// The event registry of a database holding both examples' events. A projector stops on an
/// event of a type it cannot decode on a stream it reads (`accepts_stream`); events of streams
/// it does not read are skipped before decoding, whatever their type. Registering both examples'
/// types lets one worker binary run projectors of either.
pub fn upcasters() -> es_core::Upcasters {
    let builder = deal::register(es_core::Upcasters::builder())
        .register::<bank::AccountEvent>()
        .register::<users::UserEvent>()
        .register::<wire::WireEvent>();
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
