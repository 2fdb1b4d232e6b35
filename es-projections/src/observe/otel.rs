//! OpenTelemetry export of the traces (feature `otel`): when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, [`crate::cli::main`] adds a `tracing-opentelemetry` layer whose spans (`batch` per
//! batch, `command` per command, and whatever the application adds) go to that OTLP/gRPC
//! endpoint in batches, from a background thread. The exporter reads the other standard
//! variables itself (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `..._TIMEOUT`, `..._HEADERS`);
//! `OTEL_SERVICE_NAME` names the service, the binary's name otherwise.
//!
//! The exported spans are filtered by `ES_TRACES_FILTER` (an `EnvFilter` directive, default
//! `info`: the `batch` and `command` spans), not by `RUST_LOG`, which filters only what is
//! printed: quieter logs do not silence the traces.
//!
//! Premise: built inside a tokio runtime (the gRPC client needs one); `cli::main` is async.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::filter::{EnvFilter, Filtered};
use tracing_subscriber::Layer as _;

/// The environment variable that turns the export on.
pub(crate) const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The environment variable that filters the exported spans.
pub(crate) const FILTER: &str = "ES_TRACES_FILTER";

/// The layer that exports spans, filtered, and its provider.
pub(crate) type Export<S> = (
    Filtered<OpenTelemetryLayer<S, Tracer>, EnvFilter, S>,
    SdkTracerProvider,
);

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OtelError {
    /// The OTLP exporter could not be built from the environment.
    #[error("the OTLP exporter cannot be built: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// `ES_TRACES_FILTER` is not a valid filter.
    #[error("{FILTER}={value:?} is not a valid filter: {source}")]
    Filter {
        /// The value given.
        value: String,
        /// What is wrong with it.
        source: tracing_subscriber::filter::ParseError,
    },
}

/// The layer and its provider (shut it down before exiting, to send what is buffered), or None
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is not set.
pub(crate) fn layer<S>(binary: &str) -> Result<Option<Export<S>>, OtelError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    if std::env::var_os(ENDPOINT).is_none_or(|v| v.is_empty()) {
        return Ok(None);
    }
    let value = std::env::var(FILTER).unwrap_or_else(|_| "info".to_string());
    let filter =
        EnvFilter::try_new(&value).map_err(|source| OtelError::Filter { value, source })?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| binary.to_string());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let tracer = provider.tracer(binary.to_string());
    Ok(Some((
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter),
        provider,
    )))
}
