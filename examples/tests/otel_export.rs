//! The OpenTelemetry export (feature `otel`, on in the example binaries) through the real
//! `deal-worker`: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a rebuild's `batch` spans reach an
//! OTLP/gRPC endpoint, with the projection, generation, positions and event count as
//! attributes and the service named by `OTEL_SERVICE_NAME`; the binary flushes them before it
//! exits.
//!
//! The endpoint is an OTLP trace service served here with tonic from the protocol's own
//! definitions (`opentelemetry-proto`): what an OpenTelemetry Collector's OTLP receiver accepts.
//! (No collector is packaged by Debian, so none is started.)

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::{Arc, Mutex};

use es_examples::deal::{load, LoadOptions};
use es_postgres::testing::TestDatabase;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;

/// Keeps every export request it is sent.
#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key) {
        Some(Value::IntValue(n)) => Some(*n),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_exports_its_batch_spans_over_otlp() {
    let db = TestDatabase::with_max_connections(10).await;
    let options = LoadOptions {
        deals: 20,
        events: 1_000,
        concurrency: 2,
        append_batch: 50,
    };
    load(&db.pool, &options, |_| {}).await.unwrap();

    let receiver = Receiver::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve(addr),
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let url = db.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_deal-worker"))
            .args(["rebuild", "deals", "--batch-size", "100"])
            .env("DATABASE_URL", url)
            // Quiet logs: the export is filtered on its own (ES_TRACES_FILTER, default info).
            .env("RUST_LOG", "warn")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .env("OTEL_SERVICE_NAME", "deal-worker-under-test")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    server.abort();

    let requests = receiver.requests.lock().unwrap();
    let mut services = Vec::new();
    let mut batches = Vec::new();
    for request in requests.iter() {
        for resource_spans in &request.resource_spans {
            let resource = resource_spans.resource.as_ref().unwrap();
            if let Some(Value::StringValue(name)) = attribute(&resource.attributes, "service.name")
            {
                services.push(name.clone());
            }
            for scope in &resource_spans.scope_spans {
                batches.extend(scope.spans.iter().filter(|s| s.name == "batch").cloned());
            }
        }
    }
    assert!(
        !batches.is_empty(),
        "no batch span received ({} requests)\n{printed}",
        requests.len()
    );
    assert!(
        services.iter().all(|s| s == "deal-worker-under-test") && !services.is_empty(),
        "{services:?}"
    );
    // The rebuild's batches cover the log, each with its attributes.
    let mut events = 0;
    for span in &batches {
        assert!(
            matches!(attribute(&span.attributes, "projection"), Some(Value::StringValue(p)) if p == "deals"),
            "{:?}",
            span.attributes
        );
        let (first, last) = (
            int(&span.attributes, "first_position"),
            int(&span.attributes, "last_position"),
        );
        assert!(first.is_some() && first <= last, "{:?}", span.attributes);
        assert!(int(&span.attributes, "generation").is_some());
        events += int(&span.attributes, "events")
            .unwrap_or_else(|| panic!("events as an integer: {:?}", span.attributes));
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }
    assert_eq!(events, 1_000, "every event of the rebuild in a batch span");
}
