//! Status of every projection: checkpoint, head, lag, lease, last error, and what holds the
//! transaction horizon back.
//!
//! Nothing here counts over the whole log, so `status` stays fast however long the log is: the
//! lag is first the number of positions after the checkpoint (`max(global_position)` is read
//! from the position index's end), and [`count_to_apply`] then counts, for the projections a
//! binary registers, the events after the checkpoint that they would apply (by their streams),
//! reading at most [`TO_APPLY_LIMIT`] entries of the position index each. A projection that reads
//! one stream family of a busy log therefore shows 0 once it has seen everything it reads, even
//! when its worker is stopped, instead of the events of others.

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
    /// live, shadow or retired.
    pub role: String,
    /// The version of the projector code the generation is built by.
    pub code_version: i32,
    /// running, rebuilding or failed.
    pub state: String,
    /// Highest position read.
    pub watermark: i64,
    /// Positions below the watermark still waiting for their transactions.
    pub hole_positions: i64,
    /// Events applied since the last reset.
    pub events_applied: i64,
    /// Positions after the watermark up to the head of the log: an upper bound of the events it
    /// has not seen, counting those of streams it does not read.
    pub lag_events: i64,
    /// Of the events after the watermark, those it would apply (by its streams), when counted by
    /// [`count_to_apply`]; None when not counted (a name this binary does not register).
    pub to_apply: Option<ToApply>,
    /// Age of the oldest committed event after the watermark (0 when caught up).
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

/// How many of the events after a checkpoint a projection would apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToApply {
    /// Events counted that it reads.
    pub events: u64,
    /// Whether the count stopped at [`TO_APPLY_LIMIT`] events after the checkpoint: there may be
    /// more.
    pub more: bool,
}

impl fmt::Display for ToApply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.events, if self.more { "+" } else { "" })
    }
}

/// How many events after a checkpoint [`count_to_apply`] looks at, at most, per generation.
pub const TO_APPLY_LIMIT: u32 = 100_000;

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
    /// Its current or last query on one line, cut short; `None` when it may hold a secret
    /// (a password, a key), which `status` must not print.
    pub query: Option<String>,
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
                code_version: r.try_get("code_version")?,
                state: r.try_get("state")?,
                watermark: r.try_get("watermark")?,
                hole_positions: r.try_get("hole_positions")?,
                events_applied: r.try_get("events_applied")?,
                lag_events: r.try_get("lag_events")?,
                to_apply: None,
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
                left(coalesce(query, ''), 2000) AS query
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
                query: one_line_unless_secret(&r.try_get::<String, _>("query")?),
            })
        })
        .transpose()?;
    Ok(Status {
        head,
        projections,
        oldest_transaction,
    })
}

/// Fills in [`ProjectionStatus::to_apply`] for the projections, reactors and publishers `worker`
/// registers: of the next [`TO_APPLY_LIMIT`] events after each checkpoint, those of streams it
/// reads.
pub async fn count_to_apply(
    worker: &crate::Worker,
    status: &mut Status,
) -> Result<(), ProjectionError> {
    for p in &mut status.projections {
        let Some(unit) = worker.unit(&p.name) else {
            continue;
        };
        if p.lag_events == 0 {
            p.to_apply = Some(ToApply {
                events: 0,
                more: false,
            });
            continue;
        }
        let streams = es_postgres::streams_after(
            worker.pool(),
            es_core::GlobalPosition(p.watermark),
            TO_APPLY_LIMIT,
        )
        .await?;
        let seen: u64 = streams.iter().map(|(_, n)| n).sum();
        let events = streams
            .iter()
            // An id stored before a check it fails: counted, since it may be read.
            .filter(|(id, _)| {
                es_core::StreamId::new(id.as_str()).map_or(true, |id| unit.accepts_stream(&id))
            })
            .map(|(_, n)| n)
            .sum();
        p.to_apply = Some(ToApply {
            events,
            more: seen >= u64::from(TO_APPLY_LIMIT),
        });
    }
    Ok(())
}

/// Words that mark a statement that may carry a secret in its text.
const SECRET_MARKERS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "pgp_",
    "encrypt",
    "decrypt",
    "crypt(",
    "sslkey",
    "user mapping",
];

/// A query as `status` may print it: on one line (runs of whitespace become one space), cut at
/// 120 characters; None when it may hold a secret (`ALTER ROLE ... PASSWORD '...'`, say).
fn one_line_unless_secret(query: &str) -> Option<String> {
    let lower = query.to_lowercase();
    if SECRET_MARKERS.iter().any(|m| lower.contains(m)) {
        return None;
    }
    let line = query.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(if line.chars().count() > 120 {
        format!("{}...", line.chars().take(120).collect::<String>())
    } else {
        line
    })
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "log head: position {}", self.head)?;
        let header = [
            "NAME",
            "KIND",
            "GEN",
            "VERSION",
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
        let rows: Vec<[String; 14]> = self
            .projections
            .iter()
            .map(|p| {
                [
                    p.name.clone(),
                    p.kind.clone(),
                    p.generation.to_string(),
                    p.code_version.to_string(),
                    p.role.clone(),
                    p.state.clone(),
                    p.watermark.to_string(),
                    p.hole_positions.to_string(),
                    p.events_applied.to_string(),
                    match p.to_apply {
                        Some(n) => n.to_string(),
                        None => format!("{} pos", p.lag_events),
                    },
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
        if self.projections.iter().any(|p| p.lag_events > 0) {
            writeln!(
                f,
                "LAG: events after the checkpoint that it reads (\"pos\": log positions, any stream); LAG S: age of the oldest event after it"
            )?;
        }
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
                t.pid,
                t.state,
                t.age_seconds,
                t.query
                    .as_deref()
                    .unwrap_or("(query not shown: it may hold a secret)")
            ),
            None => writeln!(f, "horizon: no open writing transaction"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::one_line_unless_secret;

    #[test]
    fn a_query_is_shown_on_one_line_and_never_with_a_secret() {
        assert_eq!(
            one_line_unless_secret("SELECT *\n  FROM   deals\n\tWHERE id = $1").as_deref(),
            Some("SELECT * FROM deals WHERE id = $1")
        );
        assert_eq!(
            one_line_unless_secret("ALTER ROLE app PASSWORD 'hunter2'"),
            None
        );
        assert_eq!(
            one_line_unless_secret("create user x with encrypted password 'x'"),
            None
        );
        assert_eq!(
            one_line_unless_secret(&"x ".repeat(200)).map(|q| q.len()),
            Some(123)
        );
    }
}
