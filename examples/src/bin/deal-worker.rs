//! The examples' worker: `deal-worker migrate | grant | run | status | verify |
//! rebuild deals [--shadow] | dead-letters | retry | skip`.
//!
//! It runs the deals projection, the wire transfer process manager (`wires`), and, when
//! `NATS_URL` names a NATS server with JetStream, a publisher of every deal event to it
//! (`deal_publisher`, subjects `es.deal.<stream>`).

use std::process::ExitCode;

use es_core::Repository;
use es_examples::deal::DealsProjector;
use es_examples::upcasters;
use es_examples::wire::WireProcess;
use es_postgres::PgEventStore;
use es_projections::nats::{JetStreamOptions, JetStreamSink};
use es_projections::publisher::Publisher;
use es_projections::Worker;

#[tokio::main]
async fn main() -> ExitCode {
    // The publisher needs the broker only where it may run: `status` and the dead-letter list
    // work while the broker is down.
    let needs_broker = std::env::args()
        .skip(1)
        .any(|a| matches!(a.as_str(), "run" | "verify" | "retry" | "skip"));
    let sink = match std::env::var("NATS_URL") {
        Ok(url) if !url.is_empty() && needs_broker => {
            match JetStreamSink::connect(&url, JetStreamOptions::default()).await {
                Ok(sink) => Some(sink),
                Err(error) => {
                    es_projections::cli::report_error("deal-worker", &error);
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    es_projections::cli::main("deal-worker", move |pool| {
        let store = || PgEventStore::new(pool.clone());
        let wires = WireProcess::new(Repository::new(store()), Repository::new(store()));
        let mut worker = Worker::new(pool.clone(), upcasters())
            .projection(DealsProjector)?
            .reactor(wires)?;
        if let Some(sink) = sink {
            let publisher = Publisher::new("deal_publisher", sink)?
                .streams(|s| s.as_str().starts_with(es_examples::deal::STREAM_PREFIX));
            worker = worker.publisher(publisher)?;
        }
        Ok(worker)
    })
    .await
}
