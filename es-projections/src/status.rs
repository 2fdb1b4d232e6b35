//! Status of every projection: checkpoint, head, lag, lease, last error, and what holds the
//! transaction horizon back.

use std::fmt;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use crate::error::ProjectionError;

/// One projection generation's status.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// Its generation.
    pub generation: i32,
    /// live or shadow.
    pub role: String,
    /// running, rebuilding or failed.
    pub state: String,
    /// Highest position read.
    pub watermark: i64,
    /// Positions below the watermark still waiting for their transactions.
    pub hole_positions: i64,
    /// Events applied since the last reset.
    pub events_applied: i64,
    /// Committed events above the watermark.
    pub lag_events: i64,
    /// Age of the oldest committed event not yet applied (0 when caught up).
    pub lag_seconds: f64,
    /// Lease holder, if the lease is current.
    pub owner: Option<String>,
    /// The last error, with when it happened.
    pub last_error: Option<(String, DateTime<Utc>)>,
}

/// A transaction that holds the horizon back: holes below it cannot be settled until it ends.
#[derive(Clone, Debug, PartialEq)]
pub struct HorizonHolder {
    /// Its backend's pid (`SELECT pg_terminate_backend(pid)` ends it).
    pub pid: i32,
    /// How long its transaction has been open.
    pub age_seconds: f64,
    /// The backend's state (`idle in transaction` is the usual culprit).
    pub state: String,
    /// The start of its current or last query.
    pub query: String,
}

/// The status of all projections.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// The highest position in the log.
    pub head: i64,
    /// Every live and shadow generation.
    pub projections: Vec<ProjectionStatus>,
    /// The oldest open writing transaction, if any.
    pub oldest_transaction: Option<HorizonHolder>,
}

/// Reads the status.
pub async fn status(pool: &PgPool) -> Result<Status, ProjectionError> {
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM es_events")
        .fetch_one(pool)
        .await?;
    let rows = sqlx::query(
        "SELECT p.name, p.generation, p.role, p.state, p.watermark, p.events_applied,
                (SELECT coalesce(sum((h->>'end')::bigint - (h->>'start')::bigint + 1), 0)::bigint
                   FROM jsonb_array_elements(p.holes) h) AS hole_positions,
                (SELECT count(*) FROM (SELECT 1 FROM es_events e
                    WHERE e.global_position > p.watermark LIMIT 10000000) t) AS lag_events,
                coalesce(extract(epoch FROM now() - (SELECT min(e.recorded_at) FROM
                    (SELECT recorded_at FROM es_events e WHERE e.global_position > p.watermark
                     ORDER BY e.global_position LIMIT 1) e))::float8, 0) AS lag_seconds,
                CASE WHEN p.lease_expires_at > now() THEN p.owner END AS owner,
                p.last_error, p.last_error_at
         FROM es_projections p
         WHERE p.role IN ('live', 'shadow')
         ORDER BY p.name, p.generation",
    )
    .fetch_all(pool)
    .await?;
    let projections = rows
        .iter()
        .map(|r| {
            let error: Option<String> = r.try_get("last_error")?;
            let at: Option<DateTime<Utc>> = r.try_get("last_error_at")?;
            Ok(ProjectionStatus {
                name: r.try_get("name")?,
                generation: r.try_get("generation")?,
                role: r.try_get("role")?,
                state: r.try_get("state")?,
                watermark: r.try_get("watermark")?,
                hole_positions: r.try_get("hole_positions")?,
                events_applied: r.try_get("events_applied")?,
                lag_events: r.try_get("lag_events")?,
                lag_seconds: r.try_get("lag_seconds")?,
                owner: r.try_get("owner")?,
                last_error: error.zip(at),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let holder = sqlx::query(
        "SELECT pid, extract(epoch FROM now() - xact_start)::float8 AS age, coalesce(state, '') AS state,
                left(coalesce(query, ''), 80) AS query
         FROM pg_stat_activity
         WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
         ORDER BY xact_start LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let oldest_transaction = holder
        .map(|r| {
            Ok::<_, sqlx::Error>(HorizonHolder {
                pid: r.try_get("pid")?,
                age_seconds: r.try_get::<Option<f64>, _>("age")?.unwrap_or(0.0),
                state: r.try_get("state")?,
                query: r.try_get("query")?,
            })
        })
        .transpose()?;
    Ok(Status {
        head,
        projections,
        oldest_transaction,
    })
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "log head: position {}", self.head)?;
        let header = [
            "PROJECTION",
            "GEN",
            "ROLE",
            "STATE",
            "CHECKPOINT",
            "HOLES",
            "APPLIED",
            "LAG",
            "LAG S",
            "LEASE",
        ];
        let rows: Vec<[String; 10]> = self
            .projections
            .iter()
            .map(|p| {
                [
                    p.name.clone(),
                    p.generation.to_string(),
                    p.role.clone(),
                    p.state.clone(),
                    p.watermark.to_string(),
                    p.hole_positions.to_string(),
                    p.events_applied.to_string(),
                    p.lag_events.to_string(),
                    format!("{:.1}", p.lag_seconds),
                    p.owner.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        writeln!(f, "{}", line(&header.map(String::from)))?;
        for row in &rows {
            writeln!(f, "{}", line(row))?;
        }
        for p in &self.projections {
            if let Some((error, at)) = &p.last_error {
                writeln!(
                    f,
                    "last error of {} at {}: {}",
                    p.name,
                    at.format("%F %T"),
                    error
                )?;
            }
        }
        match &self.oldest_transaction {
            Some(t) => writeln!(
                f,
                "horizon held by pid {} ({}, open {:.1} s): {}",
                t.pid, t.state, t.age_seconds, t.query
            ),
            None => writeln!(f, "horizon: no open writing transaction"),
        }
    }
}
