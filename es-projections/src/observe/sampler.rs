//! The periodic status sample: one run of [`crate::status()`] (read-only SELECTs, the same
//! statements `status` prints from) every sample interval, which sets the gauges, feeds the
//! stall detection and keeps the recent lag of each projection for the status page.
//!
//! Sampled rather than computed in the batch loop because lag, dead letters and the head live in
//! the database and are the same whichever process asks; a batch loop frozen on a lock could not
//! report its own lag anyway.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tracing::warn;

use super::health::Progress;
use super::metrics::Metrics;
use crate::status::{count_to_apply, status, ProjectionStatus, Status};
use crate::Worker;

/// One projection (or consumer) this process runs, as the observer tracks it.
struct Tracked {
    name: String,
    kind: &'static str,
    progress: Progress,
    /// (when, lag in events, lag in seconds), oldest first.
    history: VecDeque<(DateTime<Utc>, i64, f64)>,
    latest: Option<ProjectionStatus>,
}

/// What the samples have found so far.
pub(crate) struct Sampled {
    owner: String,
    units: Vec<Tracked>,
    head: i64,
    /// When the last sample succeeded (monotonic, and as wall-clock time for the page).
    last_ok: Option<(Instant, DateTime<Utc>)>,
    last_error: Option<String>,
    started: Instant,
    history_len: usize,
}

/// The readiness answer.
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    /// One line per projection that is not ready (or about the samples themselves).
    pub(crate) reasons: Vec<String>,
}

impl Sampled {
    pub(crate) fn new(
        owner: String,
        units: Vec<(String, &'static str)>,
        history_len: usize,
    ) -> Self {
        let now = Instant::now();
        Self {
            owner,
            units: units
                .into_iter()
                .map(|(name, kind)| Tracked {
                    name,
                    kind,
                    progress: Progress::new(now),
                    history: VecDeque::new(),
                    latest: None,
                })
                .collect(),
            head: 0,
            last_ok: None,
            last_error: None,
            started: now,
            history_len: history_len.max(2),
        }
    }

    fn record(&mut self, status: Status, metrics: &Metrics, stall: Duration) {
        let now = Instant::now();
        let wall = Utc::now();
        self.head = status.head;
        self.last_ok = Some((now, wall));
        self.last_error = None;
        metrics.head.set(status.head);
        for unit in &mut self.units {
            let row = status
                .projections
                .iter()
                .find(|p| p.name == unit.name && p.role == "live")
                .cloned();
            unit.progress.sample(row.as_ref(), status.head, now);
            let labels = [unit.name.as_str(), unit.kind];
            let stalled = unit
                .progress
                .verdict(&unit.name, row.as_ref(), status.head, stall, now)
                .is_some();
            metrics
                .stalled
                .with_label_values(&labels)
                .set(i64::from(stalled));
            if let Some(p) = &row {
                metrics
                    .lag_events
                    .with_label_values(&labels)
                    .set(p.lag_events);
                if let Some(to_apply) = p.to_apply {
                    metrics
                        .to_apply
                        .with_label_values(&labels)
                        .set(i64::try_from(to_apply.events).unwrap_or(i64::MAX));
                }
                metrics
                    .lag_seconds
                    .with_label_values(&labels)
                    .set(p.lag_seconds);
                metrics.cursor.with_label_values(&labels).set(p.watermark);
                metrics
                    .holes
                    .with_label_values(&labels)
                    .set(p.hole_positions);
                metrics
                    .dead_letters
                    .with_label_values(&labels)
                    .set(p.dead_letters);
                let held = p.owner.as_deref() == Some(self.owner.as_str());
                metrics
                    .lease_held
                    .with_label_values(&labels)
                    .set(i64::from(held));
                metrics
                    .failed
                    .with_label_values(&labels)
                    .set(i64::from(p.state == "failed"));
                unit.history.push_back((wall, p.lag_events, p.lag_seconds));
                while unit.history.len() > self.history_len {
                    unit.history.pop_front();
                }
            }
            unit.latest = row;
        }
    }

    /// Whether every tracked projection is caught up or moving (see [`super::health`]).
    pub(crate) fn readiness(&self, stall: Duration, sample_interval: Duration) -> Readiness {
        let now = Instant::now();
        // Samples must be recent for their verdict to mean anything.
        let fresh = stall.max(sample_interval * 3);
        let mut reasons = Vec::new();
        match self.last_ok {
            None if now.duration_since(self.started) < fresh => {
                reasons.push("starting: no status sample yet".to_string())
            }
            None => reasons.push(format!(
                "no status sample succeeded since the start: {}",
                self.last_error.as_deref().unwrap_or("none finished yet")
            )),
            Some((at, _)) if now.duration_since(at) > fresh => reasons.push(format!(
                "no status sample for {:.0} s: {}",
                now.duration_since(at).as_secs_f64(),
                self.last_error
                    .as_deref()
                    .unwrap_or("the status query is slow")
            )),
            Some(_) => {
                for unit in &self.units {
                    if let Some(reason) = unit.progress.verdict(
                        &unit.name,
                        unit.latest.as_ref(),
                        self.head,
                        stall,
                        now,
                    ) {
                        reasons.push(reason);
                    }
                }
            }
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
        }
    }

    /// What `/status.json` serves.
    pub(crate) fn to_json(&self, stall: Duration, sample_interval: Duration) -> StatusJson {
        let readiness = self.readiness(stall, sample_interval);
        let now = Instant::now();
        StatusJson {
            head: self.head,
            sampled_at: self
                .last_ok
                .map(|(_, at)| at.to_rfc3339_opts(SecondsFormat::Secs, true)),
            sample_error: self.last_error.clone(),
            ready: readiness.ready,
            reasons: readiness.reasons,
            stall_seconds: stall.as_secs_f64(),
            owner: self.owner.clone(),
            projections: self
                .units
                .iter()
                .map(|u| {
                    let p = u.latest.as_ref();
                    ProjectionJson {
                        name: u.name.clone(),
                        kind: u.kind,
                        state: p.map_or_else(|| "not started".to_string(), |p| p.state.clone()),
                        generation: p.map(|p| p.generation),
                        owner: p.and_then(|p| p.owner.clone()),
                        lease_held: p.and_then(|p| p.owner.as_deref()) == Some(self.owner.as_str()),
                        watermark: p.map_or(0, |p| p.watermark),
                        lag_events: p.map_or(0, |p| p.lag_events),
                        lag_seconds: p.map_or(0.0, |p| p.lag_seconds),
                        hole_positions: p.map_or(0, |p| p.hole_positions),
                        dead_letters: p.map_or(0, |p| p.dead_letters),
                        last_error: p
                            .and_then(|p| p.last_error.as_ref())
                            .map(|(e, _)| e.clone()),
                        last_error_at: p
                            .and_then(|p| p.last_error.as_ref())
                            .map(|(_, at)| at.to_rfc3339_opts(SecondsFormat::Secs, true)),
                        not_ready: u.progress.verdict(&u.name, p, self.head, stall, now),
                        history: u
                            .history
                            .iter()
                            .map(|(at, events, seconds)| HistoryPoint {
                                at: at.timestamp_millis(),
                                lag_events: *events,
                                lag_seconds: *seconds,
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

/// Samples every `interval` until the task is aborted.
pub(crate) async fn run(
    worker: Worker,
    state: std::sync::Arc<Mutex<Sampled>>,
    metrics: std::sync::Arc<Metrics>,
    interval: Duration,
    stall: Duration,
) {
    loop {
        match status(worker.pool()).await {
            Ok(mut found) => {
                // What each projection would apply, by its `accepts_stream`: one bounded read
                // per projection behind. Without it the gauge keeps its last value.
                if let Err(error) = count_to_apply(&worker, &mut found).await {
                    warn!(%error, "counting the events projections would apply failed");
                }
                lock(&state).record(found, &metrics, stall)
            }
            Err(error) => {
                metrics.sample_errors.inc();
                warn!(%error, "status sample failed; readiness turns 503 if it keeps failing");
                lock(&state).last_error = Some(error.to_string());
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// The state, even if a thread panicked while holding it (it holds plain data).
pub(crate) fn lock(state: &Mutex<Sampled>) -> std::sync::MutexGuard<'_, Sampled> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// `/status.json`.
#[derive(Serialize)]
pub(crate) struct StatusJson {
    head: i64,
    sampled_at: Option<String>,
    sample_error: Option<String>,
    ready: bool,
    reasons: Vec<String>,
    stall_seconds: f64,
    owner: String,
    projections: Vec<ProjectionJson>,
}

#[derive(Serialize)]
struct ProjectionJson {
    name: String,
    kind: &'static str,
    state: String,
    generation: Option<i32>,
    owner: Option<String>,
    lease_held: bool,
    watermark: i64,
    lag_events: i64,
    lag_seconds: f64,
    hole_positions: i64,
    dead_letters: i64,
    last_error: Option<String>,
    last_error_at: Option<String>,
    not_ready: Option<String>,
    history: Vec<HistoryPoint>,
}

#[derive(Serialize)]
struct HistoryPoint {
    /// Milliseconds since the Unix epoch.
    at: i64,
    lag_events: i64,
    lag_seconds: f64,
}
