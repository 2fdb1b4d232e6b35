//! Metrics, health and a status page for worker processes, served over HTTP on one address.
//!
//! Which do I need?
//! - Prometheus scrapes `GET /metrics` (text exposition format): per projection, reactor and
//!   publisher (labels `projection`, `kind`) the lag in events and seconds, the checkpoint, the
//!   holes open in it, open dead letters, whether this process holds the lease, events applied,
//!   a batch duration histogram and errors by kind; the log head; the events and commits this
//!   process appended. docs/operations.md ("Metrics and health") lists them with the alerts to
//!   put on them.
//! - An orchestrator probes `GET /health/live` (the process is up and serving: always 200) and
//!   `GET /health/ready` (200 while every projection this process runs is caught up or moving;
//!   503 naming the projection when committed events wait and its checkpoint has not moved for
//!   the stall time, or when it failed; see [`health`](self) below).
//! - A person opens `GET /`: a self-contained page (no external resource) polling
//!   `GET /status.json` that shows each projection's state, lease holder, lag over the last
//!   minutes as a chart, and last error.
//!
//! How: counters and the histogram are recorded by the worker's batch loop into the
//! [`Observer`]'s own registry (attach it with [`crate::Worker::with_observer`]). Everything
//! that lives in the database (lag, dead letters, head, lease holder, state) is sampled every
//! [`ObserveConfig::sample_interval`] by a task running [`crate::status()`], read-only
//! SELECTs, so a scrape costs no query and a frozen batch loop cannot hide its own lag.
//!
//! Cost and premise: one status query per sample interval per process; it counts the events
//! above each checkpoint (capped at ten million, `status.sql`), so a far-behind projection makes
//! it slower, which is why the default interval is seconds, not milliseconds. Samples are only
//! as fresh as the interval: readiness needs the stall time to be several intervals.
//!
//! ```no_run
//! # async fn demo(worker: es_projections::Worker) -> Result<(), Box<dyn std::error::Error>> {
//! use es_projections::observe::{serve, ObserveConfig, Observer};
//! let observer = Observer::new(ObserveConfig::default())?;
//! let worker = worker.with_observer(&observer);
//! let serving = serve("127.0.0.1:9464", &observer, &worker, &[]).await?;
//! println!("metrics on http://{}/metrics", serving.local_addr());
//! worker.run(es_projections::cli::shutdown_signal()).await?;
//! serving.stop().await;
//! # Ok(()) }
//! ```

mod health;
mod http;
mod metrics;
mod sampler;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::ToSocketAddrs;
use tokio::sync::watch;

pub(crate) use metrics::Recorder;
#[cfg(feature = "otel")]
pub(crate) mod otel;

/// The span of a consumer's batch (a projection's is `engine::apply_and_checkpoint`'s): the
/// same fields, so that traces show both alike.
pub(crate) fn batch_span(
    projection: &str,
    kind: &str,
    lease: &crate::checkpoint::Lease,
    delivered: &[i64],
) -> tracing::Span {
    tracing::info_span!(
        "batch",
        projection,
        kind,
        generation = lease.generation,
        first_position = delivered.iter().min(),
        last_position = delivered.iter().max(),
        events = delivered.len(),
    )
}

use crate::error::ProjectionError;
use crate::worker::Worker;
use metrics::Metrics;
use sampler::Sampled;

/// How the observer samples and judges readiness.
#[derive(Clone, Debug)]
pub struct ObserveConfig {
    /// How long a projection may stay behind with its checkpoint not moving before
    /// `/health/ready` answers 503 (default 60 s). Pick it well above the longest batch a
    /// healthy worker runs.
    pub stall: Duration,
    /// How often the status is sampled (default 5 s); keep it a fraction of `stall`.
    pub sample_interval: Duration,
    /// How far back the status page's charts reach (default 10 minutes).
    pub history: Duration,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        Self {
            stall: Duration::from_secs(60),
            sample_interval: Duration::from_secs(5),
            history: Duration::from_secs(600),
        }
    }
}

impl ObserveConfig {
    /// The default config with this stall time, sampling at most every fifth of it.
    pub fn with_stall(stall: Duration) -> Self {
        let default = Self::default();
        Self {
            stall,
            sample_interval: default
                .sample_interval
                .min(stall / 5)
                .max(Duration::from_millis(50)),
            ..default
        }
    }
}

/// Why the observer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The address could not be bound (in use, not local, no permission): pick another one.
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
    },
    /// A metric could not be registered (a bug: two metrics of one name).
    #[error("cannot set up the metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A name given to [`serve`] is not registered in the worker.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// The metrics registry and sampled status of one worker. Cheap to clone.
#[derive(Clone)]
pub struct Observer {
    metrics: Arc<Metrics>,
    config: ObserveConfig,
}

impl Observer {
    /// An observer with its own registry.
    pub fn new(config: ObserveConfig) -> Result<Self, ObserveError> {
        Ok(Self {
            metrics: Arc::new(Metrics::new()?),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ObserveConfig {
        &self.config
    }

    /// What the batch loop records into.
    pub(crate) fn recorder(&self) -> Recorder {
        Recorder::new(self.metrics.clone())
    }

    /// The Prometheus text exposition of every metric, as `/metrics` serves it.
    pub fn render(&self) -> Result<String, ObserveError> {
        Ok(self.metrics.render()?.0)
    }
}

/// The HTTP server and the sampler, running until [`Serving::stop`] or drop.
pub struct Serving {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Serving {
    /// The address bound (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving: requests in flight are answered, then the server and the sampler end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        // The sampler loops forever; the server ends on the signal. Give it a moment, then end
        // whatever is left.
        let server_done = async {
            while self.tasks.len() > 1 {
                if self.tasks.join_next().await.is_none() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), server_done).await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Serves `/metrics`, `/health/live`, `/health/ready`, `/status.json` and `/` on `addr`, and
/// samples the status of the projections `names` of `worker` (all when empty: pass what
/// [`Worker::run_only`] runs). `worker` should carry `observer`
/// ([`Worker::with_observer`]), else the batch counters stay at zero.
pub async fn serve(
    addr: impl ToSocketAddrs + std::fmt::Display,
    observer: &Observer,
    worker: &Worker,
    names: &[String],
) -> Result<Serving, ObserveError> {
    let units: Vec<(String, &'static str)> = if names.is_empty() {
        worker
            .names()
            .into_iter()
            .filter_map(|n| worker.unit(n).map(|u| (n.to_string(), u.kind())))
            .collect()
    } else {
        names
            .iter()
            .map(|n| {
                worker
                    .unit(n)
                    .map(|u| (n.clone(), u.kind()))
                    .ok_or_else(|| ProjectionError::UnknownProjection(n.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    let config = observer.config.clone();
    let history_len = (config.history.as_secs_f64()
        / config.sample_interval.as_secs_f64().max(0.001))
    .ceil()
    .min(10_000.0) as usize;
    let state = Arc::new(Mutex::new(Sampled::new(
        worker.config().owner.clone(),
        units,
        history_len,
    )));
    let shown = addr.to_string();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ObserveError::Bind {
            addr: shown.clone(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ObserveError::Bind {
        addr: shown,
        source,
    })?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(http::serve(
        listener,
        http::Shared {
            metrics: observer.metrics.clone(),
            state: state.clone(),
            config: config.clone(),
        },
        stopped,
    ));
    tasks.spawn(sampler::run(
        worker.clone(),
        state,
        observer.metrics.clone(),
        config.sample_interval,
        config.stall,
    ));
    tracing::info!(address = %local_addr, "serving metrics, health and status");
    Ok(Serving {
        local_addr,
        stop,
        tasks,
    })
}
