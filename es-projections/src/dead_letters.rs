//! Dead letters (`es_dead_letters`): events a projection or consumer parked instead of stopping,
//! and what an operator does about them. This module owns the table's statements (`sql/`), but
//! for the two that forget a generation's letters with its checkpoint (`checkpoint`'s reset and
//! delete).
//!
//! **Parking keeps per-stream order.** Once a stream has an open letter, every later event of
//! that stream is parked behind it too (cause `held`) instead of being applied out of order: a
//! `Closed` must not be applied while the `Opened` before it waits. Other streams go on.
//!
//! **An operator acts through requests**: [`request`] marks letters to retry or skip (with a
//! reason), and the one process holding the lease carries them out, so a retry never races the
//! worker that applies new events. (A consumer's retry is a delivery like any other: at least
//! once, when a process dies between the effect and closing the letter.) `retry` of one letter also retries the
//! open letters before it in its stream (they go first); a held letter is retried by itself
//! once nothing failed is open before it in its stream (it only waited). A letter is never
//! deleted by these actions: it is closed as `retried` or `skipped`, with who did it and when.
//! When no process holds the lease, the CLI takes it and carries the requests out itself.
//!
//! Letters belong to a generation: a rebuild replays every event again and parks anew.

use std::collections::HashSet;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::{EventLocation, GlobalPosition, RecordedEvent, StreamId, StreamVersion};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::checkpoint::{self, Lease};
use crate::error::ProjectionError;

/// Why an event was parked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// It failed itself (could not be decoded, or its handler failed).
    Failed,
    /// An earlier event of its stream is parked: it waits behind it, to keep the stream's order.
    Held,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Failed => "failed",
            Cause::Held => "held",
        }
    }
}

/// Where a dead letter stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LetterState {
    /// Waiting for an operator (or, when held, for the letter before it).
    Open,
    /// Applied with success on a retry.
    Retried,
    /// Skipped on an operator's request; the reason is kept.
    Skipped,
}

/// What an operator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Deliver the event again (after fixing the cause).
    Retry,
    /// Give up on the event, with a reason; the events held behind it then go on.
    Skip,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Skip => "skip",
        }
    }
}

/// Which open letters a request is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every open letter of the projection or consumer.
    All,
    /// The open letters of one stream.
    Stream(StreamId),
    /// The letter of the event at this position (for a retry, with the open letters before it
    /// in its stream).
    Position(GlobalPosition),
}

/// A parked event, as `dead-letters` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Its id.
    pub id: i64,
    /// The projection or consumer that parked it.
    pub name: String,
    /// The generation it was parked by.
    pub generation: i32,
    /// The event, under its stored type and schema version (or, when it failed after
    /// upcasting, the ones its handler received).
    pub event: EventLocation,
    /// Why it was parked.
    pub cause: Cause,
    /// The last error.
    pub error: String,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// Where it stands.
    pub state: LetterState,
    /// An operator's request not carried out yet, with who asked.
    pub requested: Option<(Action, String)>,
    /// The reason given with a request (kept after a skip).
    pub reason: Option<String>,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
    /// When and by which process it was retried or skipped.
    pub resolved: Option<(DateTime<Utc>, String)>,
}

impl fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            LetterState::Open => "open",
            LetterState::Retried => "retried",
            LetterState::Skipped => "skipped",
        };
        write!(
            f,
            "{} {}: {} ({}, {} attempts): {}",
            self.name,
            state,
            self.event,
            self.cause.as_str(),
            self.attempts,
            self.error
        )
    }
}

/// An event a consumer parks, written with its batch's checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ParkedEvent {
    /// The event.
    pub event: EventLocation,
    /// Why.
    pub cause: Cause,
    /// The error (for a held event: which letter it waits behind).
    pub error: String,
    /// Delivery attempts made.
    pub attempts: u32,
}

impl ParkedEvent {
    /// An event held behind an open letter of its stream.
    pub fn held(event: &RecordedEvent, behind: &str) -> Self {
        Self {
            event: location(event),
            cause: Cause::Held,
            error: behind.to_string(),
            attempts: 0,
        }
    }
}

/// Where a stored event is, under its stored type and schema version.
pub fn location(event: &RecordedEvent) -> EventLocation {
    EventLocation {
        stream: event.stream_id.clone(),
        stream_version: event.stream_version,
        position: event.global_position,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
    }
}

/// A stored stream id (stored by this crate from a valid one; a row edited by hand into an
/// invalid one is an error naming it).
fn stream_of(stored: String) -> Result<StreamId, ProjectionError> {
    StreamId::from_stored(stored).map_err(|e| {
        ProjectionError::Store(es_core::StoreError::storage(
            "es_dead_letters holds an invalid stream id",
            false,
            e,
        ))
    })
}

fn letter_from(row: &PgRow) -> Result<DeadLetter, ProjectionError> {
    let cause = match row.try_get::<String, _>("cause")?.as_str() {
        "held" => Cause::Held,
        _ => Cause::Failed,
    };
    let state = match row.try_get::<String, _>("state")?.as_str() {
        "retried" => LetterState::Retried,
        "skipped" => LetterState::Skipped,
        _ => LetterState::Open,
    };
    let requested = match row.try_get::<Option<String>, _>("requested")?.as_deref() {
        Some("retry") => Some(Action::Retry),
        Some("skip") => Some(Action::Skip),
        _ => None,
    };
    let by: Option<String> = row.try_get("requested_by")?;
    let stream: String = row.try_get("stream_id")?;
    let version: i64 = row.try_get("stream_version")?;
    let schema_version: i32 = row.try_get("schema_version")?;
    Ok(DeadLetter {
        id: row.try_get("id")?,
        name: row.try_get("projection")?,
        generation: row.try_get("generation")?,
        event: EventLocation {
            stream: stream_of(stream)?,
            stream_version: StreamVersion(u64::try_from(version).unwrap_or(0)),
            position: GlobalPosition(row.try_get("global_position")?),
            event_type: row.try_get("event_type")?,
            schema_version: u32::try_from(schema_version).unwrap_or(0),
        },
        cause,
        error: row.try_get("error")?,
        attempts: row.try_get("attempts")?,
        state,
        requested: requested.map(|a| (a, by.unwrap_or_default())),
        reason: row.try_get("reason")?,
        parked_at: row.try_get("parked_at")?,
        resolved: row
            .try_get::<Option<DateTime<Utc>>, _>("resolved_at")?
            .zip(row.try_get::<Option<String>, _>("resolved_by")?),
    })
}

/// The dead letters of live generations: open ones, or all (`include_closed`), of one
/// projection or consumer or of all; oldest first within each.
pub async fn list(
    pool: &PgPool,
    name: Option<&str>,
    include_closed: bool,
) -> Result<Vec<DeadLetter>, ProjectionError> {
    let rows = sqlx::query(include_str!("sql/dead_letter_list.sql"))
        .bind(name)
        .bind(include_closed)
        .fetch_all(pool)
        .await?;
    rows.iter().map(letter_from).collect()
}

/// Dead letters by id (to see what became of a request).
pub async fn by_id(pool: &PgPool, ids: &[i64]) -> Result<Vec<DeadLetter>, ProjectionError> {
    let rows = sqlx::query(include_str!("sql/dead_letter_by_id.sql"))
        .bind(ids)
        .fetch_all(pool)
        .await?;
    rows.iter().map(letter_from).collect()
}

/// Asks the lease holder of `name` to retry or skip open letters of its live generation;
/// returns the ids of the letters requested (none when nothing open matched). `by` names who
/// asks (recorded); a skip needs a reason. The request is carried out by the process holding
/// the lease (see the module docs; [`Worker::carry_out`](crate::Worker::carry_out) does it
/// when none does).
pub async fn request(
    pool: &PgPool,
    name: &str,
    action: Action,
    target: &Target,
    by: &str,
    reason: Option<&str>,
) -> Result<Vec<i64>, ProjectionError> {
    if action == Action::Skip && reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(ProjectionError::Store(
            es_core::StoreError::storage_message(
                "a skip needs a reason (it is kept with the letter)",
                false,
            ),
        ));
    }
    let (position, stream) = match target {
        Target::All => (None, None),
        Target::Stream(s) => (None, Some(s.as_str())),
        Target::Position(p) => (Some(p.0), None),
    };
    let ids: Vec<i64> = sqlx::query_scalar(include_str!("sql/dead_letter_request.sql"))
        .bind(name)
        .bind(action.as_str())
        .bind(by)
        .bind(reason)
        .bind(position)
        .bind(stream)
        .fetch_all(pool)
        .await?;
    if !ids.is_empty() {
        // Wakes an idle lease holder at once instead of at its next poll.
        let _ = sqlx::query("SELECT pg_notify($1, '')")
            .bind(es_postgres::NOTIFY_CHANNEL)
            .execute(pool)
            .await;
    }
    Ok(ids)
}

/// Parks an event, in the caller's transaction.
pub(crate) async fn park(
    conn: &mut PgConnection,
    name: &str,
    generation: i32,
    parked: &ParkedEvent,
) -> Result<(), ProjectionError> {
    let event = &parked.event;
    sqlx::query(include_str!("sql/dead_letter_park.sql"))
        .bind(name)
        .bind(generation)
        .bind(event.position.0)
        .bind(event.stream.as_str())
        .bind(i64::try_from(event.stream_version.0).unwrap_or(i64::MAX))
        .bind(&event.event_type)
        .bind(i32::try_from(event.schema_version).unwrap_or(i32::MAX))
        .bind(&parked.error)
        .bind(parked.cause.as_str())
        .bind(i32::try_from(parked.attempts).unwrap_or(i32::MAX))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The streams with an open letter in `generation`: their later events are held.
pub(crate) async fn open_streams(
    pool: &PgPool,
    name: &str,
    generation: i32,
) -> Result<HashSet<StreamId>, ProjectionError> {
    let streams: Vec<String> = sqlx::query_scalar(include_str!("sql/dead_letter_open_streams.sql"))
        .bind(name)
        .bind(generation)
        .fetch_all(pool)
        .await?;
    streams.into_iter().map(stream_of).collect()
}

/// Whether the lease holder has letters to carry out (see `sql/dead_letter_has_work.sql`).
pub(crate) async fn has_work(
    pool: &PgPool,
    name: &str,
    generation: i32,
) -> Result<bool, ProjectionError> {
    Ok(
        sqlx::query_scalar(include_str!("sql/dead_letter_has_work.sql"))
            .bind(name)
            .bind(generation)
            .fetch_one(pool)
            .await?,
    )
}

/// Closes a letter as retried with success, in the caller's (fenced) transaction.
pub(crate) async fn retried(
    conn: &mut PgConnection,
    letter: &DeadLetter,
    by: &str,
) -> Result<(), ProjectionError> {
    resolve(conn, letter, "retried", by).await
}

async fn resolve(
    conn: &mut PgConnection,
    letter: &DeadLetter,
    state: &str,
    by: &str,
) -> Result<(), ProjectionError> {
    sqlx::query(include_str!("sql/dead_letter_resolve.sql"))
        .bind(letter.id)
        .bind(state)
        .bind(by)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records that a retry failed again, in the caller's (fenced) transaction.
pub(crate) async fn failed_again(
    conn: &mut PgConnection,
    letter: &DeadLetter,
    error: &str,
    attempts: u32,
) -> Result<(), ProjectionError> {
    sqlx::query(include_str!("sql/dead_letter_failed_again.sql"))
        .bind(letter.id)
        .bind(error)
        .bind(i32::try_from(attempts.max(1)).unwrap_or(i32::MAX))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Delivers a dead letter's event again, for its projection or consumer.
#[async_trait]
pub(crate) trait Redeliver: Send + Sync {
    /// Applies `event` once more and closes `letter` ([`retried`]) or records the new failure
    /// ([`failed_again`]), fenced by `lease`. `Some(true)` when applied, `Some(false)` when it
    /// failed again, `None` when the lease was lost (nothing recorded).
    async fn redeliver(
        &self,
        lease: &Lease,
        letter: &DeadLetter,
        event: RecordedEvent,
    ) -> Result<Option<bool>, ProjectionError>;
}

/// What carrying out the requests did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CarriedOut {
    /// Letters applied with success.
    pub retried: usize,
    /// Letters skipped.
    pub skipped: usize,
    /// Letters that failed again.
    pub failed: usize,
}

/// Carries out the requests on `lease`'s generation, and retries held letters with nothing
/// failed before them, stream by stream in stream order (see the module docs). None when the
/// lease was lost on the way.
pub(crate) async fn carry_out(
    pool: &PgPool,
    lease: &Lease,
    ttl: std::time::Duration,
    redeliver: &dyn Redeliver,
    stopping: &(dyn Fn() -> bool + Sync),
) -> Result<Option<CarriedOut>, ProjectionError> {
    let rows = sqlx::query(include_str!("sql/dead_letter_open.sql"))
        .bind(&lease.name)
        .bind(lease.generation)
        .fetch_all(pool)
        .await?;
    let letters = rows
        .iter()
        .map(letter_from)
        .collect::<Result<Vec<_>, _>>()?;
    let mut done = CarriedOut::default();
    let mut stopped_stream: Option<&StreamId> = None;
    let mut renewed = std::time::Instant::now();
    for letter in &letters {
        // A shutdown ends the pass between letters: what is left stays requested (or held),
        // for the next lease holder.
        if stopping() {
            break;
        }
        // Many letters take long: keep the lease, or a standby would take it and deliver them
        // too.
        if renewed.elapsed() >= ttl / 3 {
            if !checkpoint::renew(pool, lease, ttl).await? {
                return Ok(None);
            }
            renewed = std::time::Instant::now();
        }
        let requested = letter.requested.as_ref().map(|(a, _)| *a);
        // A skip delivers nothing, so it need not wait for the letters before it.
        if stopped_stream == Some(&letter.event.stream) && requested != Some(Action::Skip) {
            continue;
        }
        if stopped_stream != Some(&letter.event.stream) {
            stopped_stream = None;
        }
        match (requested, letter.cause) {
            (Some(Action::Skip), _) => {
                let mut tx = pool.begin().await?;
                if !checkpoint::hold(&mut tx, lease).await? {
                    return Ok(None);
                }
                resolve(&mut tx, letter, "skipped", &lease.owner).await?;
                tx.commit().await?;
                tracing::info!(name = %letter.name, stream = %letter.event.stream, position = %letter.event.position, "dead letter skipped");
                done.skipped += 1;
            }
            (Some(Action::Retry), _) | (None, Cause::Held) => {
                let event = es_postgres::read_at(pool, &[letter.event.position])
                    .await?
                    .pop()
                    .ok_or_else(|| {
                        ProjectionError::Store(es_core::StoreError::storage_message(
                            format!(
                                "dead letter {}: no event at position {}",
                                letter.id, letter.event.position
                            ),
                            false,
                        ))
                    })?;
                match redeliver.redeliver(lease, letter, event).await? {
                    None => return Ok(None),
                    Some(true) => {
                        tracing::info!(name = %letter.name, stream = %letter.event.stream, position = %letter.event.position, "dead letter retried");
                        done.retried += 1;
                    }
                    Some(false) => {
                        tracing::warn!(name = %letter.name, stream = %letter.event.stream, position = %letter.event.position, "dead letter failed again");
                        done.failed += 1;
                        stopped_stream = Some(&letter.event.stream);
                    }
                }
            }
            // A failed letter nobody asked about: its stream waits.
            (None, Cause::Failed) => stopped_stream = Some(&letter.event.stream),
        }
    }
    Ok(Some(done))
}
