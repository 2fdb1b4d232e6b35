//! The Prometheus registry of one [`super::Observer`] and what the worker's batch loop records
//! in it ([`Recorder`]). Each observer has its own registry (no global recorder), so that two
//! workers in one process, or two tests, never count into each other's metrics. The one
//! exception is the append counts, which es-postgres keeps per process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The labels of every per-projection metric.
const UNIT: &[&str] = &["projection", "kind"];

/// Batch durations from a millisecond to a minute: a batch is one transaction of up to
/// `batch_size` events, usually milliseconds; the upper buckets catch lock waits.
const BATCH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every metric the observer exports (documented in docs/operations.md, "Metrics and health").
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) head: IntGauge,
    pub(crate) lag_events: IntGaugeVec,
    pub(crate) to_apply: IntGaugeVec,
    pub(crate) lag_seconds: GaugeVec,
    pub(crate) cursor: IntGaugeVec,
    pub(crate) holes: IntGaugeVec,
    pub(crate) dead_letters: IntGaugeVec,
    pub(crate) lease_held: IntGaugeVec,
    pub(crate) failed: IntGaugeVec,
    pub(crate) stalled: IntGaugeVec,
    pub(crate) sample_errors: IntCounter,
    applied: IntCounterVec,
    batch_seconds: HistogramVec,
    errors: IntCounterVec,
    append_events: IntCounter,
    append_commits: IntCounter,
    /// Serialises renders: the append counters are brought up to date during a render.
    render: Mutex<()>,
}

impl Metrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let gauges = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let gauge = IntGaugeVec::new(Opts::new(name, help), UNIT)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let head = IntGauge::new(
            "es_log_head_position",
            "The highest global position in the event log (sampled).",
        )?;
        registry.register(Box::new(head.clone()))?;
        let lag_events = gauges(
            "es_projection_lag_events",
            "Log positions above the projection's checkpoint, of any stream (sampled).",
        )?;
        let to_apply = gauges(
            "es_projection_to_apply_events",
            "Events above the checkpoint in streams the projection reads, counted over at most the next 100,000 log positions: a lower bound when more wait (sampled).",
        )?;
        let lag_seconds = GaugeVec::new(
            Opts::new(
                "es_projection_lag_seconds",
                "Age of the oldest committed event the projection has not applied; 0 when caught up (sampled).",
            ),
            UNIT,
        )?;
        registry.register(Box::new(lag_seconds.clone()))?;
        let cursor = gauges(
            "es_projection_cursor_position",
            "The projection's checkpoint: the highest global position read (sampled).",
        )?;
        let holes = gauges(
            "es_projection_cursor_hole_positions",
            "Positions below the checkpoint still waiting for their writing transaction (sampled).",
        )?;
        let dead_letters = gauges(
            "es_projection_dead_letters_open",
            "Open dead letters of the projection's live generation (sampled).",
        )?;
        let lease_held = gauges(
            "es_projection_lease_held",
            "1 when this process holds the projection's lease, else 0 (sampled).",
        )?;
        let failed = gauges(
            "es_projection_failed",
            "1 when the projection stopped on an error (state failed), else 0 (sampled).",
        )?;
        let stalled = gauges(
            "es_projection_stalled",
            "1 when the projection is behind and its checkpoint has not moved for the stall time, else 0.",
        )?;
        let applied = IntCounterVec::new(
            Opts::new(
                "es_projection_events_applied_total",
                "Events applied (projections) or handled (reactors, publishers) by this process.",
            ),
            UNIT,
        )?;
        registry.register(Box::new(applied.clone()))?;
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "es_projection_batch_duration_seconds",
                "Time from reading a batch to committing its checkpoint, per committed batch.",
            )
            .buckets(BATCH_BUCKETS.to_vec()),
            UNIT,
        )?;
        registry.register(Box::new(batch_seconds.clone()))?;
        let errors = IntCounterVec::new(
            Opts::new(
                "es_projection_errors_total",
                "Errors of the batch loop by kind: transient (retried), failed (stopped), lease_lost.",
            ),
            &["projection", "kind", "error"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        let append_events = IntCounter::new(
            "es_append_events_total",
            "Events this process appended through PgEventStore.",
        )?;
        registry.register(Box::new(append_events.clone()))?;
        let append_commits = IntCounter::new(
            "es_append_commits_total",
            "Append transactions (appends and commits) this process committed through PgEventStore.",
        )?;
        registry.register(Box::new(append_commits.clone()))?;
        let sample_errors = IntCounter::new(
            "es_observe_sample_errors_total",
            "Failed status samples (the read-only status query failed).",
        )?;
        registry.register(Box::new(sample_errors.clone()))?;
        Ok(Self {
            registry,
            head,
            lag_events,
            to_apply,
            lag_seconds,
            cursor,
            holes,
            dead_letters,
            lease_held,
            failed,
            stalled,
            sample_errors,
            applied,
            batch_seconds,
            errors,
            append_events,
            append_commits,
            render: Mutex::new(()),
        })
    }

    /// The Prometheus text exposition of every metric, and its content type.
    pub(crate) fn render(&self) -> Result<(String, String), prometheus::Error> {
        let _one_at_a_time = self.render.lock().unwrap_or_else(|p| p.into_inner());
        let counts = es_postgres::append_counts();
        // Counters only go up: add what es-postgres counted since the last render.
        self.append_events
            .inc_by(counts.events.saturating_sub(self.append_events.get()));
        self.append_commits
            .inc_by(counts.commits.saturating_sub(self.append_commits.get()));
        let encoder = TextEncoder::new();
        let mut text = Vec::new();
        encoder.encode(&self.registry.gather(), &mut text)?;
        let text = String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
        Ok((text, encoder.format_type().to_string()))
    }
}

/// What the worker's batch loop calls; does nothing when no observer is attached
/// ([`crate::Worker::with_observer`]). Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Recorder(Option<Arc<Metrics>>);

impl Recorder {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self(Some(metrics))
    }

    /// A committed batch: `applied` events applied (or handled), read to commit in `elapsed`.
    pub(crate) fn batch(&self, projection: &str, kind: &str, applied: usize, elapsed: Duration) {
        if let Some(m) = &self.0 {
            let labels = [projection, kind];
            m.applied.with_label_values(&labels).inc_by(applied as u64);
            m.batch_seconds
                .with_label_values(&labels)
                .observe(elapsed.as_secs_f64());
        }
    }

    /// An error of the batch loop: `transient` (retried from the checkpoint), `failed` (the
    /// projection stopped) or `lease_lost`.
    pub(crate) fn error(&self, projection: &str, kind: &str, error: &'static str) {
        if let Some(m) = &self.0 {
            m.errors.with_label_values(&[projection, kind, error]).inc();
        }
    }
}
