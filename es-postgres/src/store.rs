//! [`PgEventStore`]: es-core's [`EventStore`] and [`SnapshotStore`] on PostgreSQL.
//!
//! Guarantees: an append is one statement, so one transaction: all of its events or none. The
//! expected version is checked in that statement, and the unique constraint
//! `es_events_stream_version_key` settles races between writers that checked at the same time:
//! of N concurrent appends with the same expected version exactly one commits and the others get
//! [`StoreError::Conflict`]. After a successful append the store wakes workers with NOTIFY on
//! [`NOTIFY_CHANNEL`](crate::NOTIFY_CHANNEL) (coalesced; see [`crate::notify`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::{
    AppendResult, Commit, Committed, EventData, EventStore, ExpectedVersion, FoldEvent,
    GlobalPosition, IdempotencyKey, RecordedEvent, Snapshot, SnapshotStore, StoreError,
    StoreLimits, StreamId, StreamVersion, UniqueChange,
};
use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use tracing::{debug, info, trace, warn};

use crate::append::{self, to_i64, Check, Columns, Failure};
use crate::commit::{self, Prepared};
use crate::error::storage;
use crate::event_types::{self, KnownTypes};
use crate::group_commit::{GroupCommit, GroupCommitter, Reply};
use crate::idempotency::{self, Stored, DEFAULT_RETENTION};
use crate::notify::Notifier;
use crate::row::{fold_event, recorded_event};
use crate::uniques;

const READ_STREAM: &str = include_str!("sql/read_stream.sql");
const READ_STREAM_FOR_FOLD: &str = include_str!("sql/read_stream_for_fold.sql");
const READ_ALL: &str = include_str!("sql/read_all.sql");
const LOAD_SNAPSHOT: &str = include_str!("sql/load_snapshot.sql");
const SAVE_SNAPSHOT: &str = include_str!("sql/save_snapshot.sql");
const UNIQUE_REBUILD_READ: &str = include_str!("sql/unique_rebuild_read.sql");

/// How many times an append with [`ExpectedVersion::Any`] (or `StreamExists`, on a stream that
/// exists) retries a version race by itself, with a short random pause that grows with each
/// attempt, so racing writers spread out.
const RACE_RETRIES: usize = 100;

/// How many expired idempotency keys one prune statement deletes.
const PRUNE_BATCH: i64 = 1_000;

/// The PostgreSQL event store. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PgEventStore {
    pool: PgPool,
    limits: StoreLimits,
    notify: bool,
    notifier: Arc<OnceLock<Option<Notifier>>>,
    group_commit: Option<GroupCommit>,
    committer: Arc<OnceLock<Option<GroupCommitter>>>,
    /// Exact appends of this store (and its clones) in flight, grouped or not.
    in_flight: Arc<AtomicUsize>,
    retention: Duration,
    /// When keys were last pruned (seconds since the epoch), shared by clones.
    last_prune: Arc<AtomicU64>,
    /// The (event type, schema version) pairs known to be in `es_event_types`.
    known: KnownTypes,
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("limits", &self.limits)
            .field("notify", &self.notify)
            .field("group_commit", &self.group_commit)
            .field("idempotency_retention", &self.retention)
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
            group_commit: Some(GroupCommit::default()),
            committer: Arc::new(OnceLock::new()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            retention: DEFAULT_RETENTION,
            // The first prune comes one interval after the store starts, not with its first
            // keyed commit: processes starting together do not all prune at once.
            last_prune: Arc::new(AtomicU64::new(now_secs())),
            known: KnownTypes::default(),
        }
    }

    /// Groups concurrent appends at an exact expected version into shared transactions (see
    /// [`crate::group_commit`]): more appends per second when many writers are bound by
    /// commits, the same answers for each writer. On by default with [`GroupCommit::default`]
    /// (adaptive: a lone append is written at once, alone); this sets other settings. Clones
    /// share the committers.
    pub fn with_group_commit(mut self, settings: GroupCommit) -> Self {
        self.group_commit = Some(settings);
        self.committer = Arc::new(OnceLock::new());
        self
    }

    /// Never groups appends: each is its own statement and transaction, written by the
    /// caller's task (no committer tasks are started).
    pub fn without_group_commit(mut self) -> Self {
        self.group_commit = None;
        self.committer = Arc::new(OnceLock::new());
        self
    }

    /// Enforces these limits on appends.
    pub fn with_limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Keeps idempotency keys this long (a day by default). A key older than that is free
    /// again: a command repeated later runs anew. Expired keys are deleted by
    /// [`PgEventStore::prune_idempotency_keys`], which keyed commits also start by themselves
    /// at most once per tenth of the retention (and at most once a minute).
    pub fn with_idempotency_retention(mut self, retention: Duration) -> Self {
        self.retention = retention.max(Duration::from_secs(1));
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

    /// Writes a [`Commit`] inside the caller's transaction (or on any connection): the
    /// caller's own rows and the events commit together, or neither does. The commit runs in a
    /// savepoint, so a refusal (a conflict, a taken unique value, a reused key) leaves the
    /// caller's transaction as it was, usable; a replayed key writes nothing and returns the
    /// first outcome. Workers are woken when the caller's transaction commits: the wake-up is a
    /// NOTIFY in that transaction, which PostgreSQL delivers only at commit.
    ///
    /// ```no_run
    /// # use es_core::{Commit, EventData, ExpectedVersion, StreamId};
    /// # async fn demo(store: es_postgres::PgEventStore) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = store.pool().begin().await?;
    /// sqlx::query("INSERT INTO deal_crm_ids (deal_id, crm_id) VALUES ($1, $2)")
    ///     .bind("deal-1")
    ///     .bind("CRM-1")
    ///     .execute(&mut *tx)
    ///     .await?;
    /// let created = EventData::raw("Created", 1, serde_json::json!({}));
    /// let deal = StreamId::new("deal-1")?;
    /// store
    ///     .commit_in(&mut tx, Commit::single(deal, ExpectedVersion::NoStream, vec![created]))
    ///     .await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Unlike [`EventStore::commit`], a lost version race is not retried here, even for
    /// [`ExpectedVersion::Any`]: it is a [`StoreError::Conflict`] for the caller, who rolls back
    /// and runs the whole transaction again. Under REPEATABLE READ or SERIALIZABLE, a key or
    /// claim committed by another transaction after the snapshot was taken is a serialization
    /// failure (transient), and a version committed after it a `Conflict`: in both cases only a
    /// new transaction (a new snapshot) can succeed.
    ///
    /// Check [`Committed::replayed`]: a replayed commit wrote nothing, and the caller's own rows
    /// may then not belong in the transaction either.
    pub async fn commit_in(
        &self,
        conn: &mut PgConnection,
        commit: Commit,
    ) -> Result<Committed, StoreError> {
        commit.check(&self.limits)?;
        let prepared = Prepared::new(commit);
        // Not learnt afterwards: the caller's transaction may still roll back, so the next
        // commit records (probes) them again.
        let new_types = self.known.unknown(prepared.columns());
        // No retry of a lost version race here, not even for `Any`: under REPEATABLE READ or
        // SERIALIZABLE every retry would read the same snapshot and lose the same race. The
        // caller's transaction decides: roll back and run it again.
        commit::write(conn, &prepared, &new_types, self.retention, self.notify).await
    }

    /// [`EventStore::append`] inside the caller's transaction: see [`PgEventStore::commit_in`].
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        let committed = self
            .commit_in(conn, Commit::single(stream.clone(), expected, events))
            .await?;
        single_result(stream, &committed)
    }

    /// Deletes idempotency keys older than the retention; returns how many.
    pub async fn prune_idempotency_keys(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = idempotency::prune(&self.pool, self.retention, PRUNE_BATCH)
                .await
                .map_err(|e| storage("pruning expired idempotency keys", e))?;
            total += deleted;
            if deleted < PRUNE_BATCH as u64 {
                break;
            }
        }
        if total > 0 {
            info!(deleted = total, "pruned expired idempotency keys");
        }
        Ok(total)
    }

    /// Starts a prune in the background if the last one is old enough.
    fn maybe_prune(&self) {
        let now = now_secs();
        let every = (self.retention.as_secs() / 10).max(60);
        let last = self.last_prune.load(Ordering::Relaxed);
        if now < last + every
            || self
                .last_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.clone();
            runtime.spawn(async move {
                if let Err(error) = store.prune_idempotency_keys().await {
                    warn!(%error, "pruning idempotency keys failed; the next keyed commit tries again");
                    store.last_prune.store(0, Ordering::Relaxed);
                }
            });
        }
    }

    /// Rewrites the unique claims of `scopes` from the log, through `changes_of` (for an
    /// aggregate, [`es_core::Repository::unique_changes_of`], and only for its streams). For
    /// repairs: a table lost, or an aggregate that starts declaring claims its old events imply.
    ///
    /// Each stream's values are folded from its own events in stream order, the changes of one
    /// transaction's events as the commit applied them (releases before claims). Every claim in
    /// the log was granted when it was written (a refused claim wrote no event), so the streams'
    /// sets are disjoint; should two streams claim one value anyway (claims written before the
    /// value was declared unique), the stream that claimed it last in the log keeps it, and the
    /// rebuild logs a warning naming both.
    ///
    /// One transaction: the claims table is locked against every claim and release meanwhile
    /// (commits that claim wait), the log is read as of the lock, and the rows replaced. Returns
    /// how many values are held afterwards.
    pub async fn rebuild_unique_claims<F, E>(
        &self,
        scopes: &[&str],
        changes_of: F,
    ) -> Result<u64, StoreError>
    where
        F: Fn(&RecordedEvent) -> Result<Vec<UniqueChange>, E>,
        E: std::error::Error + Send + Sync + 'static,
    {
        use std::collections::BTreeMap;
        let failed = |e| storage("rebuilding unique claims", e);
        let mut tx = self.pool.begin().await.map_err(failed)?;
        uniques::lock_for_rebuild(&mut tx, scopes)
            .await
            .map_err(failed)?;
        // (scope, value) -> (holder, position of its claim).
        let mut held: BTreeMap<(String, String), (String, i64)> = BTreeMap::new();
        {
            let mut rows = sqlx::query(UNIQUE_REBUILD_READ).fetch(&mut *tx);
            // The stream being folded, its values, and the changes of its current transaction.
            let mut stream: Option<String> = None;
            let mut values: BTreeMap<(String, String), i64> = BTreeMap::new();
            let mut pending: (Option<String>, Vec<(UniqueChange, i64)>) = (None, Vec::new());
            let flush = |values: &mut BTreeMap<(String, String), i64>,
                         pending: &mut Vec<(UniqueChange, i64)>| {
                let (releases, claims): (Vec<_>, Vec<_>) = pending
                    .drain(..)
                    .partition(|(c, _)| matches!(c, UniqueChange::Release { .. }));
                for (change, position) in releases.into_iter().chain(claims) {
                    let (scope, value) = change.key();
                    let key = (scope.to_string(), value.to_string());
                    match change {
                        UniqueChange::Release { .. } => {
                            values.remove(&key);
                        }
                        UniqueChange::Claim { .. } => {
                            values.entry(key).or_insert(position);
                        }
                    }
                }
            };
            let mut finish = |stream: &str, values: &mut BTreeMap<(String, String), i64>| {
                for (key, position) in std::mem::take(values) {
                    let previous = held.get(&key).cloned();
                    match previous {
                        Some((other, at)) if at > position => {
                            warn!(scope = %key.0, value = %key.1, kept = %other, dropped = %stream,
                                "two streams claim one unique value; the later claim keeps it");
                        }
                        other => {
                            if let Some((other, _)) = other {
                                warn!(scope = %key.0, value = %key.1, kept = %stream, dropped = %other,
                                    "two streams claim one unique value; the later claim keeps it");
                            }
                            held.insert(key, (stream.to_string(), position));
                        }
                    }
                }
            };
            while let Some(row) = rows.try_next().await.map_err(failed)? {
                let event = recorded_event(&row)?;
                let transaction: String = row.try_get(9).map_err(failed)?;
                if stream.as_deref() != Some(event.stream_id.as_str()) {
                    flush(&mut values, &mut pending.1);
                    if let Some(done) = &stream {
                        finish(done, &mut values);
                    }
                    stream = Some(event.stream_id.to_string());
                    pending.0 = None;
                }
                if pending.0.as_deref() != Some(transaction.as_str()) {
                    flush(&mut values, &mut pending.1);
                    pending.0 = Some(transaction);
                }
                let changes = changes_of(&event).map_err(|e| {
                    StoreError::storage(
                        format!(
                            "rebuilding unique claims: event at position {} of stream {}",
                            event.global_position, event.stream_id
                        ),
                        false,
                        e,
                    )
                })?;
                let scoped = changes.into_iter().filter(|c| scopes.contains(&c.key().0));
                pending
                    .1
                    .extend(scoped.map(|change| (change, event.global_position.0)));
            }
            flush(&mut values, &mut pending.1);
            if let Some(done) = &stream {
                finish(done, &mut values);
            }
        }
        let held: BTreeMap<(String, String), String> = held
            .into_iter()
            .map(|(key, (holder, _))| (key, holder))
            .collect();
        uniques::insert_rebuilt(&mut tx, &held)
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(held.len() as u64)
    }

    /// Writes a prepared commit on a pooled connection, retrying version races its parts'
    /// expectations allow, and records the event types it brings.
    async fn commit_prepared(&self, prepared: &Prepared) -> Result<Committed, StoreError> {
        let new_types = self.known.unknown(prepared.columns());
        let mut attempt = 1;
        let committed = loop {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| storage("acquiring a connection for a commit", e))?;
            match commit::write(&mut conn, prepared, &new_types, self.retention, false).await {
                Err(error) if prepared.retries(&error) && attempt < RACE_RETRIES => {
                    drop(conn);
                    race_pause(attempt).await;
                    attempt += 1;
                }
                other => break other?,
            }
        };
        if !committed.replayed {
            self.known.learn(new_types);
        }
        Ok(committed)
    }

    /// Records (event type, schema version) pairs of events written outside the store (a bulk
    /// load in SQL), so that start-up checks see them. The store records its own appends.
    pub async fn record_event_types(&self, pairs: &[(&str, u32)]) -> Result<(), StoreError> {
        let pairs: Vec<(String, i32)> = pairs
            .iter()
            .map(|(t, v)| (t.to_string(), i32::try_from(*v).unwrap_or(i32::MAX)))
            .collect();
        event_types::record(&self.pool, &pairs)
            .await
            .map_err(|e| storage("recording event types", e))
    }

    /// Records the pairs of every stored event, in one pass over the log: after events were
    /// written outside the store by means that cannot say which types they wrote. Returns how
    /// many pairs were new.
    pub async fn backfill_event_types(&self) -> Result<u64, StoreError> {
        event_types::backfill(&self.pool)
            .await
            .map_err(|e| storage("recording the event types of the whole log", e))
    }

    /// One append on its own (not grouped), retrying version races its expectation allows.
    async fn append_alone(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        columns: &Columns,
    ) -> Result<AppendResult, StoreError> {
        let check = Check::of(expected);
        let mut attempt = 1;
        loop {
            let result = append::append(&self.pool, stream, check, columns).await;
            match self.settle(stream, expected, columns, result).await {
                Err(StoreError::Conflict { actual, .. })
                    if check.retries_race(actual) && attempt < RACE_RETRIES =>
                {
                    trace!(stream = %stream, attempt, "version race on an {expected} append; retrying");
                    race_pause(attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// An append's statement result as the caller's answer.
    async fn settle(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        columns: &Columns,
        result: Result<Option<AppendResult>, sqlx::Error>,
    ) -> Result<AppendResult, StoreError> {
        let error = match result {
            Ok(Some(appended)) => return Ok(appended),
            Ok(None) => None,
            Err(error) => Some(error),
        };
        match error.map(Failure::of) {
            // Nothing inserted: the expectation did not hold. Say where the stream is.
            None | Some(Failure::VersionRace) => Err(StoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual: self.stream_version(stream).await.ok().flatten(),
            }),
            Some(Failure::DuplicateEventId) => Err(StoreError::DuplicateEventId {
                event_id: append::duplicate_id(&self.pool, columns).await,
            }),
            Some(Failure::Other(error)) => {
                Err(storage(format!("appending to stream {stream}"), error))
            }
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
                self.append_alone(stream, expected, &columns).await
            }
            Ok(Reply::Done(result, columns)) => {
                self.settle(stream, expected, &columns, result).await
            }
            Ok(Reply::GroupFailed { message, transient }) => Err(StoreError::storage_message(
                format!("appending to stream {stream} (in a group commit): {message}"),
                transient,
            )),
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
}

/// One exact append in flight, counted until dropped.
struct InFlight<'a> {
    count: &'a AtomicUsize,
    /// How many others were in flight when this one started.
    others: usize,
}

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let others = count.fetch_add(1, Ordering::AcqRel);
        Self { count, others }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A short random pause before retrying a lost version race, growing with each attempt.
async fn race_pause(attempt: usize) {
    let cap_micros = (attempt as u64 * 200).min(20_000);
    let pause = uuid::Uuid::new_v4().as_u128() as u64 % cap_micros;
    tokio::time::sleep(Duration::from_micros(pause)).await;
}

fn single_result(stream: &StreamId, committed: &Committed) -> Result<AppendResult, StoreError> {
    committed.stream(stream).map(|s| s.result()).ok_or_else(|| {
        StoreError::storage_message(
            format!("the commit to {stream} returned no outcome for it"),
            false,
        )
    })
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
        if !self.known.unknown([&columns]).is_empty() && !self.known.loaded() {
            // Once per process: another process has usually recorded the pair already.
            self.stored_event_types().await?;
        }
        if !self.known.unknown([&columns]).is_empty() {
            // The first append of a pair this process has not recorded: the pair is recorded
            // in the append's transaction (once per pair and process).
            let committed = self
                .commit_prepared(&Prepared::single(stream, expected, columns))
                .await?;
            crate::counts::record(count as u64);
            self.wake_workers();
            return single_result(stream, &committed);
        }
        // Counted while in flight (until this future ends, however it ends), so that an
        // adaptive store sees whether others are writing too.
        let exact = matches!(Check::of(expected), Check::Exact(_));
        let _in_flight = exact.then(|| InFlight::enter(&self.in_flight));
        let others = _in_flight.as_ref().map_or(0, |f| f.others);
        let grouped = match (Check::of(expected), self.committer()) {
            (Check::Exact(version), Some(committer))
                if others > 0 || self.group_commit.is_some_and(|g| !g.alone_when_idle) =>
            {
                Some((version, committer))
            }
            _ => None,
        };
        let appended = match grouped {
            Some((version, committer)) => {
                self.append_grouped(committer, stream, expected, version, columns)
                    .await?
            }
            None => self.append_alone(stream, expected, &columns).await?,
        };
        debug!(
            stream = %stream,
            events = count,
            version = %appended.stream_version,
            position = %appended.global_position,
            grouped = grouped.is_some(),
            "appended"
        );
        crate::counts::record(count as u64);
        self.wake_workers();
        Ok(appended)
    }

    async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let keyed = commit.idempotency().is_some();
        commit.check(&self.limits)?;
        let committed = self.commit_prepared(&Prepared::new(commit)).await?;
        debug!(
            streams = committed.streams.len(),
            position = %committed.global_position(),
            replayed = committed.replayed,
            "committed"
        );
        if !committed.replayed {
            crate::counts::record(committed.streams.iter().map(|s| s.events).sum());
            self.wake_workers();
        }
        if keyed {
            self.maybe_prune();
        }
        Ok(committed)
    }

    async fn idempotent_outcome(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Committed>, StoreError> {
        let stored = idempotency::read(&self.pool, key, self.retention)
            .await
            .map_err(|e| storage("reading an idempotency key", e))?;
        match stored {
            None => Ok(None),
            Some(Stored::Other) => Err(StoreError::IdempotencyKeyReused {
                key: key.key().to_string(),
            }),
            Some(Stored::Same(streams)) => Ok(Some(Committed {
                streams,
                replayed: true,
            })),
        }
    }

    async fn unique_holder(
        &self,
        scope: &str,
        value: &str,
    ) -> Result<Option<StreamId>, StoreError> {
        let holder = uniques::holder(&self.pool, scope, value)
            .await
            .map_err(|e| storage(format!("reading who holds {scope} {value:?}"), e))?;
        holder
            .map(|h| {
                StreamId::from_stored(h).map_err(|e| {
                    StoreError::storage("a stored unique value's holder is invalid", false, e)
                })
            })
            .transpose()
    }

    async fn stored_event_types(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let stored = event_types::stored(&self.pool)
            .await
            .map_err(|e| storage("reading the event types the log holds", e))?;
        // Committed rows: appends of these pairs need not record them again.
        self.known.load(stored.iter().cloned());
        Ok(stored
            .into_iter()
            .map(|(t, v)| (t, u32::try_from(v).unwrap_or(0)))
            .collect())
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
        append::stream_version(&self.pool, stream)
            .await
            .map_err(|e| storage(format!("reading the version of stream {stream}"), e))
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
        snapshot.check()?;
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
