//! Readiness: is every projection this process runs caught up or moving?
//!
//! A projection is *stalled* when committed events wait above its checkpoint (the head has
//! moved past it) and the checkpoint has not moved for the stall time: a worker frozen on a
//! lock while it still holds the lease, a process that stopped applying, a projection no
//! process runs. Being behind is not a stall as long as the checkpoint moves: a worker catching
//! up a long log stays ready all the way. A failed projection (stopped on an error) is not
//! ready at once, whatever its lag: it will not move by itself.
//!
//! Judged from sampled status rows (the database's view, whoever holds the lease), so a
//! standby process reports the stall of a projection it runs too: it is the projection that is
//! stuck, and the body names the lease holder.

use std::time::{Duration, Instant};

use crate::status::ProjectionStatus;

/// What is known of one projection between samples.
#[derive(Debug)]
pub(crate) struct Progress {
    /// The checkpoint seen at the last sample.
    watermark: Option<i64>,
    /// Since when it has been behind without its checkpoint moving: the last sample that saw it
    /// move or caught up, so up to one sample interval before it fell behind.
    since: Instant,
}

impl Progress {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            watermark: None,
            since: now,
        }
    }

    /// Takes a sample: `row` is the live generation's status (None before its row exists),
    /// `head` the log head.
    pub(crate) fn sample(&mut self, row: Option<&ProjectionStatus>, head: i64, now: Instant) {
        let (behind, watermark) = match row {
            Some(p) => (p.lag_events > 0, Some(p.watermark)),
            // No row yet: behind as soon as the log holds anything.
            None => (head > 0, None),
        };
        if !behind || watermark != self.watermark {
            self.since = now;
        }
        self.watermark = watermark;
    }

    /// Why the projection is not ready, or None when it is caught up or moving.
    pub(crate) fn verdict(
        &self,
        name: &str,
        row: Option<&ProjectionStatus>,
        head: i64,
        stall: Duration,
        now: Instant,
    ) -> Option<String> {
        if let Some(p) = row.filter(|p| p.state == "failed") {
            let error = p.last_error.as_ref().map_or("no error recorded", |e| &e.0);
            return Some(format!("{name}: failed, not applying: {error}"));
        }
        let still = now.saturating_duration_since(self.since);
        if still < stall {
            return None;
        }
        Some(match row {
            None => format!(
                "{name}: no checkpoint for {:.0} s while the log head is at {head}",
                still.as_secs_f64()
            ),
            Some(p) if p.lag_events > 0 => format!(
                "{name}: checkpoint at {} has not moved for {:.0} s while {} events wait (log head {head}); state {}, lease {}",
                p.watermark,
                still.as_secs_f64(),
                p.lag_events,
                p.state,
                p.owner.as_deref().unwrap_or("not held"),
            ),
            Some(_) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(watermark: i64, lag_events: i64) -> ProjectionStatus {
        ProjectionStatus {
            name: "p".into(),
            kind: "projection".into(),
            generation: 1,
            role: "live".into(),
            code_version: 1,
            to_apply: None,
            state: "running".into(),
            watermark,
            hole_positions: 0,
            events_applied: watermark,
            lag_events,
            lag_seconds: 0.0,
            owner: Some("me".into()),
            last_error: None,
            last_verified: None,
            dead_letters: 0,
        }
    }

    const STALL: Duration = Duration::from_secs(10);

    #[test]
    fn behind_but_moving_is_ready_and_frozen_is_not() {
        let t0 = Instant::now();
        let mut progress = Progress::new(t0);
        for i in 0..10u64 {
            let now = t0 + Duration::from_secs(5 * i);
            let r = row(100 * i as i64, 1000);
            progress.sample(Some(&r), 2000, now);
            assert_eq!(progress.verdict("p", Some(&r), 2000, STALL, now), None);
        }
        // Frozen at 900 from t0 + 45 s on.
        let frozen = row(900, 1000);
        let at = |s| t0 + Duration::from_secs(s);
        progress.sample(Some(&frozen), 2100, at(50));
        assert_eq!(
            progress.verdict("p", Some(&frozen), 2100, STALL, at(50)),
            None
        );
        progress.sample(Some(&frozen), 2200, at(56));
        let reason = progress.verdict("p", Some(&frozen), 2200, STALL, at(56));
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.starts_with("p: checkpoint at 900")),
            "{reason:?}"
        );
        // Moves again: ready at once.
        let moved = row(950, 900);
        progress.sample(Some(&moved), 2200, at(57));
        assert_eq!(
            progress.verdict("p", Some(&moved), 2200, STALL, at(57)),
            None
        );
    }

    #[test]
    fn caught_up_and_idle_is_ready_however_long() {
        let t0 = Instant::now();
        let mut progress = Progress::new(t0);
        let idle = row(500, 0);
        for s in [0, 30, 600] {
            let now = t0 + Duration::from_secs(s);
            progress.sample(Some(&idle), 500, now);
            assert_eq!(progress.verdict("p", Some(&idle), 500, STALL, now), None);
        }
        // The head moves after a long quiet time: a full stall time before a verdict.
        let behind = row(500, 3);
        let now = t0 + Duration::from_secs(605);
        progress.sample(Some(&behind), 503, now);
        assert_eq!(progress.verdict("p", Some(&behind), 503, STALL, now), None);
    }

    #[test]
    fn failed_is_not_ready_even_when_caught_up() {
        let t0 = Instant::now();
        let mut progress = Progress::new(t0);
        let mut failed = row(500, 0);
        failed.state = "failed".into();
        failed.last_error = Some(("poison".into(), chrono::Utc::now()));
        progress.sample(Some(&failed), 500, t0);
        let reason = progress.verdict("p", Some(&failed), 500, STALL, t0);
        assert_eq!(reason.as_deref(), Some("p: failed, not applying: poison"));
    }
}
