//! Status of every projection: checkpoint, head, lag, lease, last error, and what holds the
//! transaction horizon back.

use std::fmt;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use crate::checkpoint;
use crate::error::ProjectionError;

/// One projection generation's status.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionStatus {
    /// The projection, reactor or publisher.
    pub name: String,
    /// `projection`, `reactor` or `publisher`.
    pub kind: String,
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
    /// The last `verify`: when, whether it passed, and its report.
    pub last_verified: Option<Verification>,
    /// Open dead letters (`dead-letters NAME` lists them).
    pub dead_letters: i64,
}

/// The result of the last `verify` of a generation, as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// Whether every committed event up to the checkpoint had been delivered.
    pub ok: bool,
    /// Its one-line report.
    pub report: String,
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
    let head = es_postgres::log_head(pool).await?.0;
    let rows = checkpoint::status_rows(pool).await?;
    let projections = rows
        .iter()
        .map(|r| {
            let error: Option<String> = r.try_get("last_error")?;
            let at: Option<DateTime<Utc>> = r.try_get("last_error_at")?;
            Ok(ProjectionStatus {
                name: r.try_get("name")?,
                kind: r.try_get("kind")?,
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
                dead_letters: r.try_get("dead_letters")?,
                last_verified: match (
                    r.try_get::<Option<DateTime<Utc>>, _>("last_verified_at")?,
                    r.try_get::<Option<bool>, _>("last_verified_ok")?,
                    r.try_get::<Option<String>, _>("last_verify_report")?,
                ) {
                    (Some(at), Some(ok), report) => Some(Verification {
                        at,
                        ok,
                        report: report.unwrap_or_default(),
                    }),
                    _ => None,
                },
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
            "NAME",
            "KIND",
            "GEN",
            "ROLE",
            "STATE",
            "CHECKPOINT",
            "HOLES",
            "APPLIED",
            "LAG",
            "LAG S",
            "VERIFIED",
            "DEAD",
            "LEASE",
        ];
        let rows: Vec<[String; 13]> = self
            .projections
            .iter()
            .map(|p| {
                [
                    p.name.clone(),
                    p.kind.clone(),
                    p.generation.to_string(),
                    p.role.clone(),
                    p.state.clone(),
                    p.watermark.to_string(),
                    p.hole_positions.to_string(),
                    p.events_applied.to_string(),
                    p.lag_events.to_string(),
                    format!("{:.1}", p.lag_seconds),
                    match &p.last_verified {
                        Some(v) => format!(
                            "{} {}",
                            if v.ok { "ok" } else { "FAILED" },
                            v.at.format("%F %T")
                        ),
                        None => "never".into(),
                    },
                    p.dead_letters.to_string(),
                    p.owner.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        f.write_str(&crate::table::render(header, &rows))?;
        for p in &self.projections {
            if let Some((error, at)) = &p.last_error {
                writeln!(
                    f,
                    "last error of {} at {}: {}",
                    p.name,
                    at.format("%F %T"),
                    // It may name a stream stored before ids were checked for invisible
                    // characters: shown escaped, as in the table.
                    es_core::escape_for_display(error)
                )?;
            }
            if let Some(v) = p.last_verified.as_ref().filter(|v| !v.ok) {
                writeln!(f, "last verify of {}: {}", p.name, v.report)?;
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
