//! The statements that append one stream's events, shared by the store's plain appends, group
//! commit and commits: the events as column arrays, the expected version lowered once, and
//! what a statement's outcome means.

use es_core::{AppendResult, EventData, ExpectedVersion, GlobalPosition, StreamId, StreamVersion};
use serde_json::Value;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use crate::error::{is_event_id_conflict, is_stream_version_conflict};

const APPEND_CHECKED: &str = include_str!("sql/append.sql");
const APPEND_EXACT: &str = include_str!("sql/append_exact.sql");
const STREAM_VERSION: &str = include_str!("sql/stream_version.sql");
const STORED_EVENT_ID: &str = include_str!("sql/stored_event_id.sql");

/// An expected version as the statements take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// The stream is exactly at this version (0: it has no events). `append_exact.sql`.
    Exact(i64),
    /// No check; the statement appends after whatever the stream holds. `append.sql`.
    Any,
    /// The stream has at least one event. `append.sql`.
    StreamExists,
}

impl Check {
    pub(crate) fn of(expected: ExpectedVersion) -> Self {
        match expected {
            ExpectedVersion::Exact(version) => Check::Exact(to_i64(version.0)),
            ExpectedVersion::NoStream => Check::Exact(0),
            ExpectedVersion::Any => Check::Any,
            ExpectedVersion::StreamExists => Check::StreamExists,
        }
    }

    /// Whether a lost version race may be retried by the store itself: with `Any` the caller
    /// has no expectation to break, and with `StreamExists` a stream that was seen to exist
    /// (`actual` is known) still does.
    pub(crate) fn retries_race(self, actual: Option<StreamVersion>) -> bool {
        match self {
            Check::Any => true,
            Check::StreamExists => actual.is_some(),
            Check::Exact(_) => false,
        }
    }
}

/// Why an append statement failed in the database.
pub(crate) enum Failure {
    /// Another writer committed the stream's next version first (or the check did not hold).
    VersionRace,
    /// One of the events' ids is already stored.
    DuplicateEventId,
    /// Anything else.
    Other(sqlx::Error),
}

impl Failure {
    pub(crate) fn of(error: sqlx::Error) -> Self {
        if is_stream_version_conflict(&error) {
            Failure::VersionRace
        } else if is_event_id_conflict(&error) {
            Failure::DuplicateEventId
        } else {
            Failure::Other(error)
        }
    }
}

/// Appends one stream's events if `check` holds: `Ok(None)` when it does not (and no writer
/// raced this one to the next version, which is an error).
pub(crate) async fn append<'c>(
    conn: impl PgExecutor<'c>,
    stream: &StreamId,
    check: Check,
    columns: &Columns,
) -> Result<Option<AppendResult>, sqlx::Error> {
    match check {
        Check::Exact(version) => append_exact(conn, stream, version, columns).await,
        Check::Any => append_checked(conn, stream, "any", columns).await,
        Check::StreamExists => append_checked(conn, stream, "stream_exists", columns).await,
    }
}

/// The command path: the stream must be at `version` exactly (0: no events).
pub(crate) async fn append_exact<'c>(
    conn: impl PgExecutor<'c>,
    stream: &StreamId,
    version: i64,
    columns: &Columns,
) -> Result<Option<AppendResult>, sqlx::Error> {
    let rows = sqlx::query(APPEND_EXACT)
        .bind(stream.as_str())
        .bind(version)
        .bind(&columns.event_ids)
        .bind(&columns.event_types)
        .bind(&columns.schema_versions)
        .bind(&columns.payloads)
        .bind(&columns.metadata)
        .fetch_all(conn)
        .await?;
    let mut last = None;
    for row in &rows {
        let version: i64 = row.try_get("stream_version")?;
        let position: i64 = row.try_get("global_position")?;
        if last.is_none_or(|(v, _)| version > v) {
            last = Some((version, position));
        }
    }
    Ok(last.map(|(version, position)| result(version, position)))
}

/// `Any` and `StreamExists`: the statement reads the current version itself.
async fn append_checked<'c>(
    conn: impl PgExecutor<'c>,
    stream: &StreamId,
    kind: &str,
    columns: &Columns,
) -> Result<Option<AppendResult>, sqlx::Error> {
    let row = sqlx::query(APPEND_CHECKED)
        .bind(stream.as_str())
        .bind(kind)
        .bind(0i64)
        .bind(&columns.event_ids)
        .bind(&columns.event_types)
        .bind(&columns.schema_versions)
        .bind(&columns.payloads)
        .bind(&columns.metadata)
        .fetch_one(conn)
        .await?;
    let last_version: Option<i64> = row.try_get("last_version")?;
    let last_position: Option<i64> = row.try_get("last_position")?;
    Ok(last_version
        .zip(last_position)
        .map(|(version, position)| result(version, position)))
}

/// A stream's version (None: no events).
pub(crate) async fn stream_version<'c>(
    conn: impl PgExecutor<'c>,
    stream: &StreamId,
) -> Result<Option<StreamVersion>, sqlx::Error> {
    let version: Option<i64> = sqlx::query_scalar(STREAM_VERSION)
        .bind(stream.as_str())
        .fetch_one(conn)
        .await?;
    Ok(version.map(|v| StreamVersion(v.max(0) as u64)))
}

/// Which of these events' ids is stored, to name a duplicate; the first id when none can be
/// found (the other insert rolled back meanwhile, or the lookup failed).
pub(crate) async fn duplicate_id<'c>(conn: impl PgExecutor<'c>, columns: &Columns) -> Uuid {
    let found: Option<Uuid> = sqlx::query_scalar(STORED_EVENT_ID)
        .bind(&columns.event_ids)
        .fetch_optional(conn)
        .await
        .ok()
        .flatten();
    found
        .or(columns.event_ids.first().copied())
        .unwrap_or_default()
}

pub(crate) fn result(version: i64, position: i64) -> AppendResult {
    AppendResult {
        stream_version: StreamVersion(version.max(0) as u64),
        global_position: GlobalPosition(position),
    }
}

/// An append's events as the column arrays the append statements unnest.
pub(crate) struct Columns {
    pub(crate) event_ids: Vec<Uuid>,
    pub(crate) event_types: Vec<String>,
    pub(crate) schema_versions: Vec<i32>,
    pub(crate) payloads: Vec<Value>,
    pub(crate) metadata: Vec<Value>,
}

impl Columns {
    pub(crate) fn new(events: Vec<EventData>) -> Self {
        let mut columns = Columns {
            event_ids: Vec::with_capacity(events.len()),
            event_types: Vec::with_capacity(events.len()),
            schema_versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
        };
        for event in events {
            columns.metadata.push(event.metadata.to_json());
            columns.event_ids.push(event.event_id);
            columns.event_types.push(event.event_type);
            columns
                .schema_versions
                .push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
            columns.payloads.push(event.payload);
        }
        columns
    }
}

pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
