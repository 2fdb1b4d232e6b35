//! [`Repository`]: load an aggregate, handle a command, append the new events with the loaded
//! version, and retry on a conflict under a bounded policy.
//!
//! Loading reads the latest usable snapshot (if snapshots are on) and the events after it, each
//! upcast to its current schema before `apply` sees it. A command that loses a race is decided
//! again on the fresh state: commands must therefore be `Clone`, and `handle` must be a pure
//! decision (no side effects outside the returned events).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::aggregate::Aggregate;
use crate::commit::{Commit, Committed, IdempotencyKey, StreamAppend, UniqueChange};
use crate::error::{EncodeError, RepositoryError, StoreError};
use crate::event::{EventData, Metadata};
use crate::snapshot::{Snapshot, SnapshotPolicy, SnapshotStore, SnapshotWrite, StateSource};
use crate::store::EventStore;
use crate::stream::{ExpectedVersion, GlobalPosition, StreamId, StreamVersion};
use crate::upcast::Upcasters;

/// How often and how patiently a command is retried after a conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// The backoff before the first retry; it doubles each time, with full jitter.
    pub initial_backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// Never retry: a conflict fails the command at once.
    pub fn no_retry() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The pause before retry number `retry` (1-based): a random share of the capped
    /// exponential backoff, so that racing writers spread out.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let cap = exp.min(self.max_backoff);
        let random = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as u32;
        cap.mul_f64(f64::from(random) / 1_000_000.0)
    }
}

/// An aggregate loaded from its stream.
#[derive(Debug)]
pub struct Loaded<A> {
    /// The folded state.
    pub state: A,
    /// The version of the last event folded in (0 for a new stream).
    pub version: StreamVersion,
    /// How many events were read and applied (after the snapshot, if one was used).
    pub events_replayed: usize,
    /// The version of the snapshot the load started from, if one was used.
    pub snapshot_version: Option<StreamVersion>,
}

/// The result of a command that was accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome<E> {
    /// The stream's version after the command.
    pub stream_version: StreamVersion,
    /// The global position of the last event written; None when the command caused no events.
    /// Wait for a projection to reach it to read your own write.
    pub global_position: Option<GlobalPosition>,
    /// The events the command caused.
    pub events: Vec<E>,
    /// How many attempts it took (1 without a conflict).
    pub attempts: u32,
    /// True when the command's idempotency key was already stored: nothing was written, and
    /// the versions, position and events are those of the first execution.
    pub replayed: bool,
}

/// How to execute one command: the metadata stamped on its events and an optional
/// idempotency key.
#[derive(Clone, Debug, Default)]
pub struct CommandOptions {
    /// Stamped on every new event.
    pub metadata: Metadata,
    /// Makes the command safe to repeat: a second execution with the same key writes nothing
    /// and returns the first outcome. The repository binds the key to the aggregate type and
    /// the streams, so the same key on another stream is
    /// [`StoreError::IdempotencyKeyReused`].
    pub idempotency_key: Option<IdempotencyKey>,
}

impl CommandOptions {
    /// With this metadata.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// With this idempotency key.
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
        self
    }
}

/// A command decided but not written ([`Repository::decide`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<E> {
    /// The version of the stream the decision was made on.
    pub version: StreamVersion,
    /// The events decided.
    pub events: Vec<E>,
    /// What to write: the events at that version, with their unique values and the command's
    /// idempotency key. None when the command causes no events, or was replayed.
    pub commit: Option<Commit>,
    /// True when the command's idempotency key is already stored: `version` and `events` are
    /// the first execution's, and there is nothing to write. (A commit of this decision can
    /// still come back `replayed`, if the first execution committed in between: check
    /// `Committed::replayed` before relying on what else the caller's transaction wrote.)
    pub replayed: bool,
}

/// What one stream of a command over several aggregates became.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOutcome<E> {
    /// The stream.
    pub stream: StreamId,
    /// Its version after the command.
    pub stream_version: StreamVersion,
    /// The events the command caused on it (none: the stream was not written).
    pub events: Vec<E>,
}

/// The result of an accepted command over several aggregates ([`Repository::execute_across`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AcrossOutcome<E> {
    /// One per stream, in the order the streams were given.
    pub streams: Vec<StreamOutcome<E>>,
    /// The global position of the last event written; None when the command caused no events.
    pub global_position: Option<GlobalPosition>,
    /// How many attempts it took (1 without a conflict).
    pub attempts: u32,
    /// True when the idempotency key was already stored (see [`CommandOutcome::replayed`]).
    pub replayed: bool,
}

type ToJson<A> = fn(&A) -> Result<Value, serde_json::Error>;
type FromJson<A> = fn(Value) -> Result<A, serde_json::Error>;

struct Snapshots<A> {
    store: Arc<dyn SnapshotStore>,
    policy: SnapshotPolicy,
    write: SnapshotWrite,
    to_json: ToJson<A>,
    from_json: FromJson<A>,
}

/// How many aggregates a repository keeps in memory unless told otherwise
/// ([`Repository::with_cache`], [`Repository::without_cache`]).
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Recently used aggregates, kept after each command so that the next command on the same
/// stream skips reading it. A stale entry (another process appended meanwhile) is caught by the
/// append's expected version, dropped, and the command is decided again on a fresh load.
///
/// A command takes its stream's entry out and puts the new state back after its append: the
/// state is moved, never cloned (so any aggregate can be cached), and two commands on one stream
/// in one process never share an entry (the second loads from the store). When full, the entry
/// put back least recently goes.
struct Cache<A> {
    inner: Mutex<Lru<A>>,
}

/// A least-recently-used map: entries by stream, and the streams by when they were put.
struct Lru<A> {
    entries: HashMap<StreamId, (A, StreamVersion, u64)>,
    /// Tick of each entry's last put -> its stream; the first is the least recently used.
    order: BTreeMap<u64, StreamId>,
    tick: u64,
    capacity: usize,
}

impl<A> Lru<A> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    fn take(&mut self, stream: &StreamId) -> Option<(A, StreamVersion)> {
        let (state, version, tick) = self.entries.remove(stream)?;
        self.order.remove(&tick);
        Some((state, version))
    }

    fn put(&mut self, stream: &StreamId, state: A, version: StreamVersion) {
        if let Some((_, held, _)) = self.entries.get(stream) {
            // A concurrent command of this process appended later and put its state first:
            // keep the newer one.
            if *held > version {
                return;
            }
        }
        self.take(stream);
        while self.entries.len() >= self.capacity {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&victim);
        }
        self.tick += 1;
        self.order.insert(self.tick, stream.clone());
        self.entries
            .insert(stream.clone(), (state, version, self.tick));
    }
}

impl<A> Cache<A> {
    fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Lru::new(capacity)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<A>> {
        // Every critical section leaves the map consistent: a panic elsewhere cannot poison it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, stream: &StreamId) -> Option<(A, StreamVersion)> {
        self.lock().take(stream)
    }

    fn put(&self, stream: &StreamId, state: A, version: StreamVersion) {
        self.lock().put(stream, state, version);
    }

    fn evict(&self, stream: &StreamId) {
        self.lock().take(stream);
    }
}

/// Loads aggregates and executes commands against an [`EventStore`].
///
/// ```
/// # use es_core::{Aggregate, DomainEvent, InMemoryStore, Repository, StreamId};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default)] struct Counter { value: u64 }
/// # #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Incremented", 1)];
/// # }
/// # #[derive(Debug, thiserror::Error)] #[error("zero")] struct Zero;
/// # impl Aggregate for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type Command = u64; type Event = CounterEvent; type Error = Zero;
/// #     fn handle(&self, by: u64) -> Result<Vec<CounterEvent>, Zero> {
/// #         if by == 0 { Err(Zero) } else { Ok(vec![CounterEvent::Incremented { by }]) }
/// #     }
/// #     fn apply(&mut self, CounterEvent::Incremented { by }: &CounterEvent) { self.value += by; }
/// # }
/// # tokio_test_block(async {
/// let repository = Repository::<Counter>::new(InMemoryStore::new());
/// let counter = StreamId::new("counter-1")?;
/// repository.execute(&counter, 2).await?;
/// let outcome = repository.execute(&counter, 3).await?;
/// assert_eq!(outcome.stream_version.0, 2);
/// assert_eq!(repository.load(&counter).await?.state.value, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # });
/// # fn tokio_test_block<F: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>>(f: F) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f).unwrap()
/// # }
/// ```
pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    upcasters: Arc<Upcasters>,
    retry: RetryPolicy,
    snapshots: Option<Snapshots<A>>,
    state_source: Option<Arc<dyn StateSource<A>>>,
    cache: Option<Cache<A>>,
    /// Set once the stored event types were found readable (see [`Repository::check_stored`]).
    checked: tokio::sync::OnceCell<()>,
}

impl<A: Aggregate> Repository<A> {
    /// A repository over a store, decoding the aggregate's own event enum with no upcasters.
    pub fn new(store: impl EventStore) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// A repository over a shared store.
    pub fn from_arc(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            upcasters: Arc::new(Upcasters::of::<A::Event>()),
            retry: RetryPolicy::default(),
            snapshots: None,
            state_source: None,
            cache: Some(Cache::new(DEFAULT_CACHE_CAPACITY)),
            checked: tokio::sync::OnceCell::new(),
        }
    }

    /// Uses this registry of event types and upcasters when loading.
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = upcasters;
        self.checked = tokio::sync::OnceCell::new();
        self
    }

    /// Starts loads from the state `source` gives (a projection's row, say) and folds only
    /// the events after its version: see [`StateSource`]. A source that fails or has nothing
    /// costs a full replay (or the snapshot), never a wrong state.
    pub fn with_state_source(mut self, source: Arc<dyn StateSource<A>>) -> Self {
        self.state_source = Some(source);
        self
    }

    /// Checks that this code can read every (event type, schema version) the log holds for
    /// the types its registry knows ([`Upcasters::check_stored`]). Runs once, by itself,
    /// before the repository's first load or command; call it at start-up to fail there.
    pub async fn check_stored(&self) -> Result<(), RepositoryError<A::Error>> {
        self.checked
            .get_or_try_init(|| async {
                let stored = self.store.stored_event_types().await?;
                self.upcasters.check_stored(&stored)?;
                Ok::<(), RepositoryError<A::Error>>(())
            })
            .await?;
        Ok(())
    }

    /// Uses this retry policy on conflicts.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Loads the aggregate at its latest version.
    pub async fn load(&self, stream: &StreamId) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        self.load_up_to(stream, None).await
    }

    /// Loads the aggregate as it was at stream version `version` (for audits). Versions past the
    /// end load the latest state.
    pub async fn load_at_version(
        &self,
        stream: &StreamId,
        version: StreamVersion,
    ) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        self.load_up_to(stream, Some(version)).await
    }

    /// Loads the aggregate as it was at a point in time: every event recorded at or before `at`.
    pub async fn load_as_of(
        &self,
        stream: &StreamId,
        at: DateTime<Utc>,
    ) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        self.check_stored().await?;
        let events = self
            .store
            .read_stream(stream, StreamVersion::INITIAL, None)
            .await?;
        let mut loaded = Loaded {
            state: A::default(),
            version: StreamVersion::INITIAL,
            events_replayed: 0,
            snapshot_version: None,
        };
        for recorded in events.into_iter().take_while(|e| e.recorded_at <= at) {
            let envelope = self.upcasters.decode_required::<A::Event>(recorded)?;
            loaded.state.apply(&envelope.event);
            loaded.version = envelope.stream_version;
            loaded.events_replayed += 1;
        }
        Ok(loaded)
    }

    async fn load_up_to(
        &self,
        stream: &StreamId,
        up_to: Option<StreamVersion>,
    ) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        self.check_stored().await?;
        let mut loaded = Loaded {
            state: A::default(),
            version: StreamVersion::INITIAL,
            events_replayed: 0,
            snapshot_version: None,
        };
        let mut started = false;
        if let Some(source) = &self.state_source {
            if let Some((state, version)) = from_source(source.as_ref(), stream, up_to).await {
                loaded.state = state;
                loaded.version = version;
                loaded.snapshot_version = Some(version);
                started = true;
            }
        }
        if let (Some(snapshots), false) = (&self.snapshots, started) {
            if let Some((state, version)) = snapshots.usable(stream, up_to).await {
                loaded.state = state;
                loaded.version = version;
                loaded.snapshot_version = Some(version);
            }
        }
        let events = self
            .store
            .read_stream_for_fold(stream, loaded.version, up_to)
            .await?;
        for stored in events {
            let version = stored.stream_version;
            let event = self.upcasters.decode_fold::<A::Event>(stream, stored)?;
            // Decoded for this fold alone: moved in, not borrowed (and cloned from).
            loaded.state.apply_owned(event);
            loaded.version = version;
            loaded.events_replayed += 1;
        }
        Ok(loaded)
    }

    /// Executes a command: load, handle, append with the loaded version; on a conflict, reload
    /// and decide again under the retry policy.
    pub async fn execute(
        &self,
        stream: &StreamId,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        self.execute_with(stream, command, CommandOptions::default())
            .await
    }

    /// [`Repository::execute`] with metadata stamped on every new event.
    pub async fn execute_with_metadata(
        &self,
        stream: &StreamId,
        command: A::Command,
        metadata: Metadata,
    ) -> Result<CommandOutcome<A::Event>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        self.execute_with(
            stream,
            command,
            CommandOptions::default().metadata(metadata),
        )
        .await
    }

    /// [`Repository::execute`] with options: metadata, and an idempotency key that makes the
    /// command safe to repeat (a second execution, even one racing the first, writes nothing
    /// and returns the first outcome with `replayed` set).
    ///
    /// A command whose events claim or release unique values
    /// ([`Aggregate::unique_changes`]), or that carries a key, is written as a [`Commit`]; any
    /// other takes the store's plain append.
    ///
    /// Runs in a `command` span (aggregate, stream, and the expected version and attempt of
    /// the last append tried).
    #[tracing::instrument(name = "command", skip_all, fields(
        aggregate = A::TYPE,
        stream = %stream,
        expected_version = tracing::field::Empty,
        attempt = tracing::field::Empty,
    ))]
    pub async fn execute_with(
        &self,
        stream: &StreamId,
        command: A::Command,
        options: CommandOptions,
    ) -> Result<CommandOutcome<A::Event>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        self.check_stored().await?;
        let key = options
            .idempotency_key
            .as_ref()
            .map(|key| key.bound_to(&format!("{}\u{0}{stream}", A::TYPE)));
        if let Some(first) = self.stored_outcome(key.as_ref()).await? {
            return self.replayed_single(stream, first, 1).await;
        }
        let max_attempts = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        // The first attempt may start from the cache; after a conflict, always from the store.
        let mut cached = self.cache.as_ref().and_then(|c| c.take(stream));
        loop {
            let from_cache = cached.is_some();
            let loaded = match cached.take() {
                Some((state, version)) => Loaded {
                    state,
                    version,
                    events_replayed: 0,
                    snapshot_version: None,
                },
                None => self.load(stream).await?,
            };
            let events = match loaded.state.handle(command.clone()) {
                Ok(events) => events,
                // A refusal decided on cached state may be stale: decide again on a fresh load.
                Err(_) if from_cache => {
                    self.evict(stream);
                    continue;
                }
                Err(refused) => {
                    // The first execution may have committed after the key was looked up: it
                    // is then why this one is refused, and its outcome is the answer.
                    if let Some(first) = self.stored_outcome(key.as_ref()).await? {
                        return self.replayed_single(stream, first, attempt).await;
                    }
                    return Err(RepositoryError::Domain(refused));
                }
            };
            if events.is_empty() {
                // As for a refusal: nothing left to do may be the first execution's doing.
                if let Some(first) = self.stored_outcome(key.as_ref()).await? {
                    return self.replayed_single(stream, first, attempt).await;
                }
                // Nothing written: the state taken out of the cache (or just loaded) is still
                // the stream's as of its version.
                let version = loaded.version;
                if let Some(cache) = &self.cache {
                    cache.put(stream, loaded.state, version);
                }
                return Ok(CommandOutcome {
                    stream_version: version,
                    global_position: None,
                    events,
                    attempts: attempt,
                    replayed: false,
                });
            }
            let data = events
                .iter()
                .map(|event| EventData::from_event(event, options.metadata.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let expected = ExpectedVersion::Exact(loaded.version);
            let span = tracing::Span::current();
            span.record("expected_version", tracing::field::display(expected));
            span.record("attempt", attempt);
            let uniques: Vec<UniqueChange> = events.iter().flat_map(A::unique_changes).collect();
            let written = if key.is_none() && uniques.is_empty() {
                self.store
                    .append(stream, expected, data)
                    .await
                    .map(|appended| (appended, false))
            } else {
                let mut commit = Commit::new()
                    .with(StreamAppend::new(stream.clone(), expected, data).with_uniques(uniques));
                if let Some(key) = &key {
                    commit = commit.idempotent(key.clone());
                }
                match self.store.commit(commit).await {
                    Ok(first) if first.replayed => {
                        self.evict(stream);
                        return self.replayed_single(stream, first, attempt).await;
                    }
                    Ok(committed) => committed
                        .stream(stream)
                        .map(|written| (written.result(), false))
                        .ok_or_else(|| {
                            StoreError::storage_message(
                                format!("the commit to stream {stream} returned no outcome for it"),
                                false,
                            )
                        }),
                    Err(error) => Err(error),
                }
            };
            match written {
                Ok((appended, _)) => {
                    self.after_append(stream, loaded, &events, appended.stream_version)
                        .await;
                    return Ok(CommandOutcome {
                        stream_version: appended.stream_version,
                        global_position: Some(appended.global_position),
                        events,
                        attempts: attempt,
                        replayed: false,
                    });
                }
                Err(StoreError::Conflict { actual, .. }) => {
                    self.evict(stream);
                    if from_cache {
                        // A stale cache entry is not contention: reload without counting it.
                        debug!(stream = %stream, "cached aggregate was stale; reloading");
                        continue;
                    }
                    if attempt >= max_attempts {
                        return Err(RepositoryError::TooManyConflicts {
                            stream: stream.clone(),
                            attempts: attempt,
                        });
                    }
                    let pause = self.retry.backoff(attempt);
                    debug!(
                        stream = %stream,
                        attempt,
                        expected = %loaded.version,
                        actual = ?actual,
                        ?pause,
                        "conflict; reloading and retrying"
                    );
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(other) => {
                    self.evict(stream);
                    return Err(other.into());
                }
            }
        }
    }

    /// Loads the aggregate and decides the command without writing anything: the [`Commit`] to
    /// write wherever the caller wants it written. For a command whose events must commit with
    /// the caller's own rows, in the caller's transaction (in es-postgres,
    /// `PgEventStore::commit_in`). The commit expects the stream at the version the decision
    /// was made on: a conflict there means the decision is stale; decide again.
    pub async fn decide(
        &self,
        stream: &StreamId,
        command: A::Command,
        options: CommandOptions,
    ) -> Result<Decision<A::Event>, RepositoryError<A::Error>> {
        let key = options
            .idempotency_key
            .as_ref()
            .map(|key| key.bound_to(&format!("{}\u{0}{stream}", A::TYPE)));
        // A repeat whose first execution committed: its outcome, nothing to write.
        if let Some(first) = self.stored_outcome(key.as_ref()).await? {
            let outcome = self.replayed_single(stream, first, 1).await?;
            return Ok(Decision {
                version: outcome.stream_version,
                events: outcome.events,
                commit: None,
                replayed: true,
            });
        }
        let loaded = self.load(stream).await?;
        let events = match loaded.state.handle(command) {
            Ok(events) => events,
            Err(refused) => {
                if let Some(first) = self.stored_outcome(key.as_ref()).await? {
                    let outcome = self.replayed_single(stream, first, 1).await?;
                    return Ok(Decision {
                        version: outcome.stream_version,
                        events: outcome.events,
                        commit: None,
                        replayed: true,
                    });
                }
                return Err(RepositoryError::Domain(refused));
            }
        };
        let commit = if events.is_empty() {
            None
        } else {
            let data = events
                .iter()
                .map(|event| EventData::from_event(event, options.metadata.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let uniques: Vec<UniqueChange> = events.iter().flat_map(A::unique_changes).collect();
            let part =
                StreamAppend::new(stream.clone(), ExpectedVersion::Exact(loaded.version), data)
                    .with_uniques(uniques);
            let mut commit = Commit::new().with(part);
            if let Some(key) = key {
                commit = commit.idempotent(key);
            }
            Some(commit)
        };
        Ok(Decision {
            version: loaded.version,
            events,
            commit,
            replayed: false,
        })
    }

    /// Executes a command that decides over several aggregates of this type at once (a
    /// transfer between two accounts): loads each stream, calls `decide` with their states in
    /// the order given, and commits every stream's new events in one transaction, each at the
    /// version it was loaded at. On a conflict on any of them, all are reloaded and `decide`
    /// runs again, under the retry policy.
    ///
    /// `decide` returns one list of events per stream, in the same order. A stream given no
    /// events is not written, and its version is not checked: the decision must not rely on
    /// it staying unchanged.
    ///
    /// Runs in a `command` span (aggregate, the streams).
    #[tracing::instrument(name = "command", skip_all, fields(
        aggregate = A::TYPE,
        streams = %streams.iter().map(StreamId::as_str).collect::<Vec<_>>().join(","),
    ))]
    pub async fn execute_across<F>(
        &self,
        streams: &[StreamId],
        options: CommandOptions,
        decide: F,
    ) -> Result<AcrossOutcome<A::Event>, RepositoryError<A::Error>>
    where
        F: Fn(&[&A]) -> Result<Vec<Vec<A::Event>>, A::Error> + Send + Sync,
    {
        self.check_stored().await?;
        let scope = streams.iter().fold(A::TYPE.to_string(), |mut scope, s| {
            scope.push('\u{0}');
            scope.push_str(s.as_str());
            scope
        });
        let key = options.idempotency_key.as_ref().map(|k| k.bound_to(&scope));
        if let Some(first) = self.stored_outcome(key.as_ref()).await? {
            return self.replayed_across(streams, first, 1).await;
        }
        let max_attempts = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let mut loaded = Vec::with_capacity(streams.len());
            for stream in streams {
                loaded.push(self.load(stream).await?);
            }
            let states: Vec<&A> = loaded.iter().map(|l| &l.state).collect();
            let decided = match decide(&states) {
                Ok(decided) => decided,
                Err(refused) => {
                    if let Some(first) = self.stored_outcome(key.as_ref()).await? {
                        return self.replayed_across(streams, first, attempt).await;
                    }
                    return Err(RepositoryError::Domain(refused));
                }
            };
            if decided.len() != streams.len() {
                return Err(StoreError::InvalidCommit {
                    reason: format!(
                        "the decision gave events for {} streams, but {} were loaded",
                        decided.len(),
                        streams.len()
                    ),
                }
                .into());
            }
            let mut commit = Commit::new();
            for ((stream, loaded), events) in streams.iter().zip(&loaded).zip(&decided) {
                if events.is_empty() {
                    continue;
                }
                let data = events
                    .iter()
                    .map(|event| EventData::from_event(event, options.metadata.clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                let uniques = events.iter().flat_map(A::unique_changes);
                commit = commit.with(
                    StreamAppend::new(stream.clone(), ExpectedVersion::Exact(loaded.version), data)
                        .with_uniques(uniques),
                );
            }
            if commit.streams().is_empty() {
                if let Some(first) = self.stored_outcome(key.as_ref()).await? {
                    return self.replayed_across(streams, first, attempt).await;
                }
                return Ok(AcrossOutcome {
                    streams: streams
                        .iter()
                        .zip(loaded)
                        .map(|(stream, loaded)| StreamOutcome {
                            stream: stream.clone(),
                            stream_version: loaded.version,
                            events: Vec::new(),
                        })
                        .collect(),
                    global_position: None,
                    attempts: attempt,
                    replayed: false,
                });
            }
            if let Some(key) = &key {
                commit = commit.idempotent(key.clone());
            }
            match self.store.commit(commit).await {
                Ok(first) if first.replayed => {
                    streams.iter().for_each(|s| self.evict(s));
                    return self.replayed_across(streams, first, attempt).await;
                }
                Ok(committed) => {
                    let mut outcomes = Vec::with_capacity(streams.len());
                    for ((stream, loaded), events) in streams.iter().zip(loaded).zip(decided) {
                        let version = committed
                            .stream(stream)
                            .map_or(loaded.version, |written| written.stream_version);
                        if !events.is_empty() {
                            self.after_append(stream, loaded, &events, version).await;
                        }
                        outcomes.push(StreamOutcome {
                            stream: stream.clone(),
                            stream_version: version,
                            events,
                        });
                    }
                    return Ok(AcrossOutcome {
                        streams: outcomes,
                        global_position: Some(committed.global_position()),
                        attempts: attempt,
                        replayed: false,
                    });
                }
                Err(StoreError::Conflict { stream, actual, .. }) => {
                    streams.iter().for_each(|s| self.evict(s));
                    if attempt >= max_attempts {
                        return Err(RepositoryError::TooManyConflicts {
                            stream,
                            attempts: attempt,
                        });
                    }
                    let pause = self.retry.backoff(attempt);
                    debug!(stream = %stream, attempt, actual = ?actual, ?pause,
                        "conflict on a command across streams; reloading all and retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(other) => {
                    streams.iter().for_each(|s| self.evict(s));
                    return Err(other.into());
                }
            }
        }
    }

    /// The unique values a stored event claims or releases, decoded through this repository's
    /// registry ([`Aggregate::unique_changes`]); none for an event of a type the registry does
    /// not know (another aggregate's). What [`rebuild_unique_claims`] in es-postgres folds.
    ///
    /// [`rebuild_unique_claims`]: https://docs.rs/es-postgres/latest/es_postgres/struct.PgEventStore.html#method.rebuild_unique_claims
    pub fn unique_changes_of(
        &self,
        event: &crate::event::RecordedEvent,
    ) -> Result<Vec<UniqueChange>, crate::error::DecodeError> {
        match self.upcasters.decode::<A::Event>(event.clone()) {
            Ok(Some(envelope)) => Ok(A::unique_changes(&envelope.event)),
            Ok(None)
            | Err(crate::error::DecodeError {
                kind: crate::error::DecodeErrorKind::UnknownEventType,
                ..
            }) => Ok(Vec::new()),
            Err(other) => Err(other),
        }
    }

    /// The outcome stored under `key`, if there is a key and it is stored.
    async fn stored_outcome(
        &self,
        key: Option<&IdempotencyKey>,
    ) -> Result<Option<Committed>, StoreError> {
        match key {
            Some(key) => self.store.idempotent_outcome(key).await,
            None => Ok(None),
        }
    }

    /// The events a stored outcome wrote to `stream`, decoded.
    async fn written_events(
        &self,
        stream: &StreamId,
        first: &Committed,
    ) -> Result<(StreamVersion, Vec<A::Event>), RepositoryError<A::Error>> {
        let Some(written) = first.stream(stream) else {
            return Ok((StreamVersion::INITIAL, Vec::new()));
        };
        let stored = self
            .store
            .read_stream_for_fold(
                stream,
                written.previous_version(),
                Some(written.stream_version),
            )
            .await?;
        let mut events = Vec::with_capacity(stored.len());
        for event in stored {
            events.push(self.upcasters.decode_fold::<A::Event>(stream, event)?);
        }
        Ok((written.stream_version, events))
    }

    async fn replayed_single(
        &self,
        stream: &StreamId,
        first: Committed,
        attempts: u32,
    ) -> Result<CommandOutcome<A::Event>, RepositoryError<A::Error>> {
        debug!(stream = %stream, "idempotency key already stored; returning the first outcome");
        let (stream_version, events) = self.written_events(stream, &first).await?;
        Ok(CommandOutcome {
            stream_version,
            global_position: Some(first.global_position()),
            events,
            attempts,
            replayed: true,
        })
    }

    async fn replayed_across(
        &self,
        streams: &[StreamId],
        first: Committed,
        attempts: u32,
    ) -> Result<AcrossOutcome<A::Event>, RepositoryError<A::Error>> {
        let mut outcomes = Vec::with_capacity(streams.len());
        for stream in streams {
            let (stream_version, events) = match first.stream(stream) {
                Some(_) => self.written_events(stream, &first).await?,
                // Not written by the first execution: where it is now.
                None => (
                    self.store.stream_version(stream).await?.unwrap_or_default(),
                    Vec::new(),
                ),
            };
            outcomes.push(StreamOutcome {
                stream: stream.clone(),
                stream_version,
                events,
            });
        }
        Ok(AcrossOutcome {
            streams: outcomes,
            global_position: Some(first.global_position()),
            attempts,
            replayed: true,
        })
    }

    /// Keeps up to `capacity` recently used aggregates in memory (on by default, with
    /// [`DEFAULT_CACHE_CAPACITY`]): a command on a cached stream skips the read and appends
    /// with the cached version; if another writer got there first (another process, or a write
    /// that bypassed this repository), the append conflicts, the entry is dropped and the
    /// command is decided again on a fresh load. A refusal decided on cached state is always
    /// re-checked on a fresh load, so stale state never causes a wrong refusal. When full, the
    /// least recently used entry goes. Plain [`Repository::load`] never reads the cache.
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = Some(Cache::new(capacity));
        self
    }

    /// Keeps no aggregate in memory: every command reads its stream first (one more round
    /// trip per command; for aggregates too large to keep, or streams almost never commanded
    /// twice).
    pub fn without_cache(mut self) -> Self {
        self.cache = None;
        self
    }

    fn evict(&self, stream: &StreamId) {
        if let Some(cache) = &self.cache {
            cache.evict(stream);
        }
    }

    /// Folds the new events into the state when the cache or a due snapshot needs it.
    async fn after_append(
        &self,
        stream: &StreamId,
        loaded: Loaded<A>,
        events: &[A::Event],
        version: StreamVersion,
    ) {
        let snapshot_due = self
            .snapshots
            .as_ref()
            .is_some_and(|s| s.policy.is_due(loaded.version, version));
        if self.cache.is_none() && !snapshot_due {
            return;
        }
        let mut state = loaded.state;
        for event in events {
            state.apply(event);
        }
        if snapshot_due {
            self.snapshot(stream, &state, version).await;
        }
        if let Some(cache) = &self.cache {
            cache.put(stream, state, version);
        }
    }

    async fn snapshot(&self, stream: &StreamId, state: &A, version: StreamVersion) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        let json = match (snapshots.to_json)(state) {
            Ok(json) => json,
            Err(error) => {
                warn!(stream = %stream, %error, "cannot serialise snapshot; skipped");
                return;
            }
        };
        let snapshot = Snapshot {
            stream_id: stream.clone(),
            aggregate_type: A::TYPE.to_string(),
            stream_version: version,
            state_version: A::STATE_VERSION,
            state: json,
            taken_at: Utc::now(),
        };
        let store = snapshots.store.clone();
        let save = async move {
            let stream = snapshot.stream_id.clone();
            if let Err(error) = store.save_snapshot(snapshot).await {
                warn!(stream = %stream, version = %version, %error, "snapshot write failed; the command stands");
            }
        };
        match snapshots.write {
            SnapshotWrite::Inline => save.await,
            SnapshotWrite::Background => {
                tokio::spawn(save);
            }
        }
    }
}

impl<A: Aggregate + Serialize + DeserializeOwned> Repository<A> {
    /// Turns snapshots on: loads start from the latest snapshot of the current
    /// [`STATE_VERSION`](Aggregate::STATE_VERSION), and appends that reach the policy's boundary
    /// write one (in the background by default).
    pub fn with_snapshots(
        mut self,
        store: Arc<dyn SnapshotStore>,
        policy: SnapshotPolicy,
        write: SnapshotWrite,
    ) -> Self {
        self.snapshots = Some(Snapshots {
            store,
            policy,
            write,
            to_json: |state| serde_json::to_value(state),
            from_json: |json| serde_json::from_value(json),
        });
        self
    }

    /// Snapshots one stream now, whatever the policy: loads the aggregate (from its latest
    /// usable snapshot, or state source, and the events after it) and stores its state at the
    /// version loaded, awaiting the write. Returns that version, or `None` for a stream with no
    /// events (nothing is stored).
    ///
    /// For an operator or a batch job: snapshot a few long streams once (appended to straight
    /// through the store, or before the policy was turned on), or take new snapshots of the hot
    /// streams right after a release that raised [`STATE_VERSION`](Aggregate::STATE_VERSION),
    /// instead of waiting for each to cross its next boundary. It writes no event and never
    /// conflicts: a snapshot is the fold of the events up to its version, true whatever is
    /// appended meanwhile; the store keeps the newest of two racing snapshots.
    ///
    /// Unlike the policy's snapshots, which are best effort, a failure is returned:
    /// [`RepositoryError::NoSnapshotStore`] without [`Repository::with_snapshots`], an
    /// [`EncodeError::SnapshotState`] when the state does not serialise, or the store's error.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use es_core::{Aggregate, DomainEvent, InMemoryStore, Repository, SnapshotPolicy, SnapshotWrite, StreamId};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Default, Serialize, Deserialize)] struct Counter { value: u64 }
    /// # #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    /// # enum CounterEvent { Incremented { by: u64 } }
    /// # impl DomainEvent for CounterEvent {
    /// #     const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Incremented", 1)];
    /// # }
    /// # #[derive(Debug, thiserror::Error)] #[error("zero")] struct Zero;
    /// # impl Aggregate for Counter {
    /// #     const TYPE: &'static str = "counter";
    /// #     type Command = u64; type Event = CounterEvent; type Error = Zero;
    /// #     fn handle(&self, by: u64) -> Result<Vec<CounterEvent>, Zero> {
    /// #         if by == 0 { Err(Zero) } else { Ok(vec![CounterEvent::Incremented { by }]) }
    /// #     }
    /// #     fn apply(&mut self, CounterEvent::Incremented { by }: &CounterEvent) { self.value += by; }
    /// # }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let store = InMemoryStore::new();
    /// let counters = Repository::<Counter>::new(store.clone()).with_snapshots(
    ///     Arc::new(store),
    ///     SnapshotPolicy::Never,
    ///     SnapshotWrite::Inline,
    /// );
    /// let id = StreamId::new("counter-1")?;
    /// counters.execute(&id, 2).await?;
    /// counters.execute(&id, 3).await?;
    /// assert_eq!(counters.snapshot_now(&id).await?.map(|v| v.0), Some(2));
    /// let loaded = counters.load(&id).await?;
    /// assert_eq!((loaded.state.value, loaded.events_replayed), (5, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn snapshot_now(
        &self,
        stream: &StreamId,
    ) -> Result<Option<StreamVersion>, RepositoryError<A::Error>> {
        let Some(snapshots) = &self.snapshots else {
            return Err(RepositoryError::NoSnapshotStore);
        };
        let loaded = self.load(stream).await?;
        if loaded.version == StreamVersion::INITIAL {
            return Ok(None);
        }
        let state = (snapshots.to_json)(&loaded.state).map_err(EncodeError::SnapshotState)?;
        snapshots
            .store
            .save_snapshot(Snapshot {
                stream_id: stream.clone(),
                aggregate_type: A::TYPE.to_string(),
                stream_version: loaded.version,
                state_version: A::STATE_VERSION,
                state,
                taken_at: Utc::now(),
            })
            .await?;
        info!(
            stream = %stream,
            version = %loaded.version,
            replayed = loaded.events_replayed,
            "snapshot taken"
        );
        Ok(Some(loaded.version))
    }
}

/// The state a [`StateSource`] gives, if it is usable for a load up to `up_to`. Every failure
/// here only costs a longer replay.
async fn from_source<A: Aggregate>(
    source: &dyn StateSource<A>,
    stream: &StreamId,
    up_to: Option<StreamVersion>,
) -> Option<(A, StreamVersion)> {
    match source.load_state(stream).await {
        Ok(Some((state, version))) if up_to.is_none_or(|max| version <= max) => {
            Some((state, version))
        }
        Ok(_) => None,
        Err(error) => {
            warn!(stream = %stream, %error, "cannot read the state source; replaying the stream");
            None
        }
    }
}

impl<A: Aggregate> Snapshots<A> {
    /// The snapshot to start from, if one is usable. Every failure here only costs a full replay.
    async fn usable(
        &self,
        stream: &StreamId,
        up_to: Option<StreamVersion>,
    ) -> Option<(A, StreamVersion)> {
        let found = match up_to {
            None => self.store.load_snapshot(stream, A::TYPE).await,
            Some(max) => self.store.load_snapshot_at(stream, A::TYPE, max).await,
        };
        let snapshot = match found {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return None,
            Err(error) => {
                warn!(stream = %stream, %error, "cannot read snapshot; replaying the stream");
                return None;
            }
        };
        if snapshot.state_version != A::STATE_VERSION {
            debug!(
                stream = %stream,
                snapshot_state_version = snapshot.state_version,
                current = A::STATE_VERSION,
                "ignoring snapshot of an older state version"
            );
            return None;
        }
        match (self.from_json)(snapshot.state) {
            Ok(state) => Some((state, snapshot.stream_version)),
            Err(error) => {
                warn!(stream = %stream, %error, "cannot decode snapshot; replaying the stream");
                None
            }
        }
    }
}

#[cfg(test)]
mod lru_tests {
    use super::*;

    fn id(name: &str) -> StreamId {
        StreamId::new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_least_recently_put_entry_goes_first() {
        let mut lru = Lru::new(2);
        lru.put(&id("a"), 1, StreamVersion(1));
        lru.put(&id("b"), 2, StreamVersion(1));
        // "a" used again (taken by a command, put back after it): "b" is now the oldest.
        let (state, version) = lru.take(&id("a")).unwrap_or_else(|| panic!("a is cached"));
        lru.put(&id("a"), state + 10, StreamVersion(version.0 + 1));
        lru.put(&id("c"), 3, StreamVersion(1));
        assert!(
            lru.take(&id("b")).is_none(),
            "b was the least recently used"
        );
        assert_eq!(lru.take(&id("a")), Some((11, StreamVersion(2))));
        assert_eq!(lru.take(&id("c")), Some((3, StreamVersion(1))));
        assert!(lru.entries.is_empty() && lru.order.is_empty());
    }

    #[test]
    fn a_taken_entry_is_gone_until_put_back_and_an_older_put_keeps_the_newer() {
        let mut lru = Lru::new(4);
        lru.put(&id("a"), 1, StreamVersion(1));
        assert_eq!(lru.take(&id("a")), Some((1, StreamVersion(1))));
        assert!(lru.take(&id("a")).is_none());
        lru.put(&id("a"), 3, StreamVersion(3));
        lru.put(&id("a"), 2, StreamVersion(2));
        assert_eq!(lru.take(&id("a")), Some((3, StreamVersion(3))));
    }

    #[test]
    fn capacity_holds_whatever_the_order_of_puts() {
        let mut lru = Lru::new(3);
        for round in 0..10u64 {
            for name in ["a", "b", "c", "d", "e"] {
                lru.put(&id(name), round, StreamVersion(round));
                assert!(lru.entries.len() <= 3);
                assert_eq!(lru.entries.len(), lru.order.len());
            }
        }
        // The last three put are the ones kept.
        assert!(lru.take(&id("a")).is_none() && lru.take(&id("b")).is_none());
        assert!(lru.take(&id("c")).is_some() && lru.take(&id("e")).is_some());
    }
}
