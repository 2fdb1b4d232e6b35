//! What this process appended: events and commits written through [`crate::PgEventStore`],
//! counted since the process started, for metrics (es-projections' `observe` module exports
//! them as `es_append_events_total` and `es_append_commits_total`).
//!
//! Process-wide on purpose: a Prometheus counter belongs to the process that is scraped, and
//! an application may build several stores on one pool. Counted after the store's statement or
//! transaction committed, so a refused append (a conflict, a duplicate) counts nothing and a
//! replayed idempotent commit counts nothing either. Appends inside the caller's own
//! transaction (`commit_in`, `append_in`) are not counted: only the caller knows whether that
//! transaction commits. Relaxed atomics: the two numbers are each exact, but a reader may see
//! one updated before the other.

use std::sync::atomic::{AtomicU64, Ordering};

static EVENTS: AtomicU64 = AtomicU64::new(0);
static COMMITS: AtomicU64 = AtomicU64::new(0);

/// Events and commits this process appended (see the module docs for what counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendCounts {
    /// Events written.
    pub events: u64,
    /// Committed appends and commits (each one transaction, whatever its number of streams).
    pub commits: u64,
}

/// The counts so far.
pub fn append_counts() -> AppendCounts {
    AppendCounts {
        events: EVENTS.load(Ordering::Relaxed),
        commits: COMMITS.load(Ordering::Relaxed),
    }
}

/// Records one committed transaction that wrote `events` events.
pub(crate) fn record(events: u64) {
    EVENTS.fetch_add(events, Ordering::Relaxed);
    COMMITS.fetch_add(1, Ordering::Relaxed);
}
