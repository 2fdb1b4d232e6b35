//! [`PgEventStore`]: es-core's [`EventStore`] and [`SnapshotStore`] on PostgreSQL.
//!
//! Guarantees: an append is one statement, so one transaction: all of its events or none. The
//! expected version is checked in that statement, and the unique constraint
//! `es_events_stream_version_key` settles races between writers that checked at the same time:
//! of N concurrent appends with the same expected version exactly one commits and the others get
//! [`StoreError::Conflict`]. After a successful append the store wakes workers with NOTIFY on
//! [`NOTIFY_CHANNEL`](crate::NOTIFY_CHANNEL) (coalesced; see [`crate::notify`]).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::{
    AppendResult, EventData, EventStore, ExpectedVersion, FoldEvent, GlobalPosition, RecordedEvent,
    Snapshot, SnapshotStore, StoreError, StoreLimits, StreamId, StreamVersion,
};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tracing::{debug, trace, warn};
use uuid::Uuid;

use crate::error::{is_stream_version_conflict, storage};
use crate::group_commit::{GroupCommit, GroupCommitter, Reply};
use crate::notify::Notifier;
use crate::row::{fold_event, recorded_event};

const APPEND: &str = include_str!("sql/append.sql");
const APPEND_EXACT: &str = include_str!("sql/append_exact.sql");
const READ_STREAM: &str = include_str!("sql/read_stream.sql");
const READ_STREAM_FOR_FOLD: &str = include_str!("sql/read_stream_for_fold.sql");
const READ_ALL: &str = include_str!("sql/read_all.sql");
const LOAD_SNAPSHOT: &str = include_str!("sql/load_snapshot.sql");
const SAVE_SNAPSHOT: &str = include_str!("sql/save_snapshot.sql");

/// How many times an append with [`ExpectedVersion::Any`] retries a version race by itself
/// (with a short random pause that grows with each attempt, so racing writers spread out).
const ANY_RETRIES: usize = 100;

/// The PostgreSQL event store. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PgEventStore {
    pool: PgPool,
    limits: StoreLimits,
    notify: bool,
    notifier: Arc<OnceLock<Option<Notifier>>>,
    group_commit: Option<GroupCommit>,
    committer: Arc<OnceLock<Option<GroupCommitter>>>,
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("limits", &self.limits)
            .field("notify", &self.notify)
            .field("group_commit", &self.group_commit)
            .finish_non_exhaustive()
    }
}

impl PgEventStore {
    /// A store on a pool whose database has the migrations applied ([`crate::migrate`]).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            limits: StoreLimits::default(),
            notify: true,
            notifier: Arc::new(OnceLock::new()),
            group_commit: None,
            committer: Arc::new(OnceLock::new()),
        }
    }

    /// Groups concurrent appends at an exact expected version into shared transactions (see
    /// [`crate::group_commit`]): more appends per second when many writers are bound by
    /// commits, the same answers for each writer. Clones share the committers.
    pub fn with_group_commit(mut self, settings: GroupCommit) -> Self {
        self.group_commit = Some(settings);
        self.committer = Arc::new(OnceLock::new());
        self
    }

    /// Enforces these limits on appends.
    pub fn with_limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sends no NOTIFY after appends (workers then find new events by polling only).
    pub fn without_notify(mut self) -> Self {
        self.notify = false;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn wake_workers(&self) {
        if !self.notify {
            return;
        }
        let notifier = self
            .notifier
            .get_or_init(|| Notifier::start(self.pool.clone()));
        if let Some(notifier) = notifier {
            notifier.wake();
        }
    }

    async fn append_once(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        columns: &Columns,
    ) -> Result<AppendResult, StoreError> {
        let result = match expected {
            ExpectedVersion::Exact(version) => {
                append_exact(&self.pool, stream, to_i64(version.0), columns).await
            }
            ExpectedVersion::NoStream => append_exact(&self.pool, stream, 0, columns).await,
            ExpectedVersion::Any | ExpectedVersion::StreamExists => {
                self.append_checked(stream, expected, columns).await
            }
        };
        self.settle(stream, expected, result).await
    }

    /// An append's statement result as the caller's answer.
    async fn settle(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        result: Result<Option<AppendResult>, sqlx::Error>,
    ) -> Result<AppendResult, StoreError> {
        match result {
            Ok(Some(appended)) => Ok(appended),
            // Nothing inserted: the expectation did not hold. Say where the stream is.
            Ok(None) => Err(StoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual: self.stream_version(stream).await.ok().flatten(),
            }),
            Err(error) if is_stream_version_conflict(&error) => Err(StoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual: self.stream_version(stream).await.ok().flatten(),
            }),
            Err(error) => Err(storage(format!("appending to stream {stream}"), error)),
        }
    }

    /// The committer, if this store groups appends and a runtime is there to run it.
    fn committer(&self) -> Option<&GroupCommitter> {
        let settings = self.group_commit?;
        self.committer
            .get_or_init(|| GroupCommitter::start(self.pool.clone(), settings))
            .as_ref()
    }

    /// An append at an exact version (0: no stream), in a group.
    async fn append_grouped(
        &self,
        committer: &GroupCommitter,
        stream: &StreamId,
        expected: ExpectedVersion,
        version: i64,
        columns: Columns,
    ) -> Result<AppendResult, StoreError> {
        match committer.append(stream, version, columns).await {
            // The committers are gone (their runtime shut down): append alone.
            Err(columns) => {
                warn!(stream = %stream, "group committers stopped; appending alone");
                self.append_once(stream, expected, &columns).await
            }
            Ok(Reply::Done(result)) => self.settle(stream, expected, result).await,
            Ok(Reply::GroupFailed { message, transient }) => Err(StoreError::Storage {
                message: format!("appending to stream {stream} (in a group commit): {message}"),
                transient,
                source: message.into(),
            }),
        }
    }

    /// The rows of a stream read (`sql` takes the stream, `after` and `up_to`).
    async fn stream_rows(
        &self,
        sql: &'static str,
        stream: &StreamId,
        after: StreamVersion,
        up_to: Option<StreamVersion>,
    ) -> Result<Vec<PgRow>, StoreError> {
        sqlx::query(sql)
            .bind(stream.as_str())
            .bind(to_i64(after.0))
            .bind(up_to.map_or(i64::MAX, |v| to_i64(v.0)))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| storage(format!("reading stream {stream}"), e))
    }

    /// `Any` and `StreamExists`: the statement reads the current version itself.
    async fn append_checked(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        columns: &Columns,
    ) -> Result<Option<AppendResult>, sqlx::Error> {
        let kind = match expected {
            ExpectedVersion::StreamExists => "stream_exists",
            _ => "any",
        };
        let row = sqlx::query(APPEND)
            .bind(stream.as_str())
            .bind(kind)
            .bind(0i64)
            .bind(&columns.event_ids)
            .bind(&columns.event_types)
            .bind(&columns.schema_versions)
            .bind(&columns.payloads)
            .bind(&columns.metadata)
            .fetch_one(&self.pool)
            .await?;
        let last_version: Option<i64> = row.try_get("last_version")?;
        let last_position: Option<i64> = row.try_get("last_position")?;
        Ok(last_version
            .zip(last_position)
            .map(|(version, position)| AppendResult {
                stream_version: StreamVersion(version as u64),
                global_position: GlobalPosition(position),
            }))
    }
}

/// The command path: the stream must be at `version` exactly (0: no events). `Ok(None)` when it
/// is not (and no writer raced this one to the next version).
pub(crate) async fn append_exact(
    pool: &PgPool,
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
        .fetch_all(pool)
        .await?;
    let mut last = None;
    for row in &rows {
        let version: i64 = row.try_get("stream_version")?;
        let position: i64 = row.try_get("global_position")?;
        if last.is_none_or(|(v, _)| version > v) {
            last = Some((version, position));
        }
    }
    Ok(last.map(|(version, position)| AppendResult {
        stream_version: StreamVersion(version as u64),
        global_position: GlobalPosition(position),
    }))
}

/// An append's events as the column arrays the append statement unnests.
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

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        self.limits.check(stream, &events)?;
        let count = events.len();
        let columns = Columns::new(events);
        let exact = match expected {
            ExpectedVersion::Exact(version) => Some(to_i64(version.0)),
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Any | ExpectedVersion::StreamExists => None,
        };
        if let (Some(version), Some(committer)) = (exact, self.committer()) {
            let appended = self
                .append_grouped(committer, stream, expected, version, columns)
                .await?;
            debug!(
                stream = %stream,
                events = count,
                version = %appended.stream_version,
                position = %appended.global_position,
                "appended (group commit)"
            );
            self.wake_workers();
            return Ok(appended);
        }
        let mut attempt = 1;
        let appended = loop {
            match self.append_once(stream, expected, &columns).await {
                // With Any the caller has no expectation to break: a lost race is retried here.
                Err(StoreError::Conflict { .. })
                    if expected == ExpectedVersion::Any && attempt < ANY_RETRIES =>
                {
                    trace!(stream = %stream, attempt, "version race on an Any append; retrying");
                    let cap_micros = (attempt as u64 * 200).min(20_000);
                    let pause = uuid::Uuid::new_v4().as_u128() as u64 % cap_micros;
                    tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
                    attempt += 1;
                }
                other => break other?,
            }
        };
        debug!(
            stream = %stream,
            events = count,
            version = %appended.stream_version,
            position = %appended.global_position,
            "appended"
        );
        self.wake_workers();
        Ok(appended)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after: StreamVersion,
        up_to: Option<StreamVersion>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = self.stream_rows(READ_STREAM, stream, after, up_to).await?;
        rows.iter().map(recorded_event).collect()
    }

    async fn read_stream_for_fold(
        &self,
        stream: &StreamId,
        after: StreamVersion,
        up_to: Option<StreamVersion>,
    ) -> Result<Vec<FoldEvent>, StoreError> {
        let rows = self
            .stream_rows(READ_STREAM_FOR_FOLD, stream, after, up_to)
            .await?;
        rows.iter().map(fold_event).collect()
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(READ_ALL)
            .bind(after.0)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| storage("reading the global log", e))?;
        rows.iter().map(recorded_event).collect()
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<StreamVersion>, StoreError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT max(stream_version) FROM es_events WHERE stream_id = $1")
                .bind(stream.as_str())
                .fetch_one(&self.pool)
                .await
                .map_err(|e| storage(format!("reading the version of stream {stream}"), e))?;
        Ok(version.map(|v| StreamVersion(v as u64)))
    }
}

#[async_trait]
impl SnapshotStore for PgEventStore {
    async fn load_snapshot(
        &self,
        stream: &StreamId,
        aggregate_type: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        let row = sqlx::query(LOAD_SNAPSHOT)
            .bind(stream.as_str())
            .bind(aggregate_type)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| storage(format!("loading the snapshot of {stream}"), e))?;
        let Some(row) = row else { return Ok(None) };
        let get = |e| storage("decoding a snapshot row", e);
        let version: i64 = row.try_get("stream_version").map_err(get)?;
        let state_version: i32 = row.try_get("state_version").map_err(get)?;
        Ok(Some(Snapshot {
            stream_id: stream.clone(),
            aggregate_type: aggregate_type.to_string(),
            stream_version: StreamVersion(version.max(0) as u64),
            state_version: state_version.max(0) as u32,
            state: row.try_get("state").map_err(get)?,
            taken_at: row.try_get::<DateTime<Utc>, _>("taken_at").map_err(get)?,
        }))
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        sqlx::query(SAVE_SNAPSHOT)
            .bind(snapshot.stream_id.as_str())
            .bind(&snapshot.aggregate_type)
            .bind(to_i64(snapshot.stream_version.0))
            .bind(i32::try_from(snapshot.state_version).unwrap_or(i32::MAX))
            .bind(&snapshot.state)
            .bind(snapshot.taken_at)
            .execute(&self.pool)
            .await
            .map_err(|e| storage(format!("saving the snapshot of {}", snapshot.stream_id), e))?;
        Ok(())
    }
}
