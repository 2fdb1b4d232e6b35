//! The routes: `/metrics`, `/health/live`, `/health/ready`, `/status.json` and `/` (the status
//! page, `page.html`, compiled in: no file, no build step, no external resource).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tracing::warn;

use super::metrics::Metrics;
use super::sampler::{lock, Sampled};
use super::ObserveConfig;

const PAGE: &str = include_str!("page.html");

#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) state: Arc<Mutex<Sampled>>,
    pub(crate) config: ObserveConfig,
}

/// Serves until `stop` turns true.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/status.json", get(status_json))
        .with_state(shared);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await;
    if let Err(error) = served {
        warn!(%error, "the metrics server stopped");
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn metrics(State(shared): State<Shared>) -> Response {
    match shared.metrics.render() {
        Ok((body, content_type)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the metrics: {error}\n"),
        ),
    }
}

async fn live() -> Response {
    text(StatusCode::OK, "live\n".into())
}

async fn ready(State(shared): State<Shared>) -> Response {
    let readiness =
        lock(&shared.state).readiness(shared.config.stall, shared.config.sample_interval);
    if readiness.ready {
        text(StatusCode::OK, "ready\n".into())
    } else {
        let mut body = String::from("not ready\n");
        for reason in &readiness.reasons {
            body.push_str(reason);
            body.push('\n');
        }
        text(StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn status_json(State(shared): State<Shared>) -> Response {
    let json = lock(&shared.state).to_json(shared.config.stall, shared.config.sample_interval);
    match serde_json::to_string(&json) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the status: {error}\n"),
        ),
    }
}
