//! The worker: runs projections, reactors and publishers, each in its own task, tailing the log
//! from its checkpoint. Consumers (reactors, publishers) differ from projections only in how a
//! batch is made effective: see [`crate::consumer`].
//!
//! Guarantees, per projection: every committed event is applied exactly once in effect (the
//! batch's effects and the new checkpoint commit in one transaction, fenced by the lease epoch);
//! a stream's events arrive in version order; a worker killed at any instant resumes from its
//! checkpoint as if it never died; at most one process applies a projection at a time, and a
//! standby takes over within a lease period when the holder dies.
//!
//! Wake-ups come from NOTIFY on [`es_postgres::NOTIFY_CHANNEL`]; polling every
//! [`WorkerConfig::poll_interval`] is the fallback, so a lost notification only delays.
//! Transient database errors, also those raised inside a projector's `apply`, are retried from
//! the checkpoint with a backoff that starts again after the next committed batch. A decode or
//! handler error stops that projection loudly (logged with projection, stream, position and
//! type, and stored in `es_projections.last_error`) unless the dead-letter policy is chosen.
//!
//! A worker whose lease is taken away (by a takeover, an in-place rebuild, or the switch of a
//! shadow rebuild, which retires the generation it was applying) finds out at its next batch,
//! before applying anything (`checkpoint::hold`), and follows: it takes the lease of whatever
//! generation is live, or stands by.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::{EventStore, GlobalPosition, RecordedEvent, StreamId, Upcasters};
use es_postgres::{read_batch, LogCursor};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::checkpoint::{self, BatchRecord, Lease, Role};
use crate::consumer::{ConsumerContext, DynConsumer, KeepAlive};
use crate::dead_letters::{self, CarriedOut, DeadLetter, Redeliver};
use crate::engine::{apply_and_checkpoint, erase, DynProjector, ErrorPolicy, ProjectionRedelivery};
use crate::error::ProjectionError;
use crate::projector::{Projector, Tables};
use crate::reactor::{Reactor, ReactorOptions};
use crate::views;

/// How a worker runs its projections.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The most events read and applied in one transaction while the worker keeps up.
    pub batch_size: usize,
    /// The most events read and applied in one transaction while the worker is behind (its
    /// previous batch came back full: after downtime, a burst, a new projection's first run),
    /// if larger than `batch_size`. Large batches cut the fixed cost per transaction (a read,
    /// a checkpoint write, a commit), which is what makes a worker with small batches catch up
    /// at a fraction of a rebuild's speed (0.42× with 500 against 0.84× with 5,000 in
    /// `es-bench catchup`); small batches keep the latency low once caught up. The worker falls
    /// back to `batch_size` after the first batch that is not full. Set it to `batch_size` or
    /// less to never read more than `batch_size` at once.
    pub catch_up_batch_size: usize,
    /// How often to look for new events when no notification arrives.
    pub poll_interval: Duration,
    /// How long a lease lasts without renewal: a standby takes over this long after the holder
    /// dies.
    pub lease_ttl: Duration,
    /// What to do with an event that cannot be decoded or applied.
    pub error_policy: ErrorPolicy,
    /// This worker's identity in leases (default: host, pid and a random suffix).
    pub owner: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            catch_up_batch_size: 5000,
            poll_interval: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(10),
            error_policy: ErrorPolicy::Stop,
            owner: default_owner(),
        }
    }
}

/// `host:pid:random`, unique per process.
pub fn default_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &suffix[..8])
}

/// Runs projections against a database.
///
/// ```no_run
/// # use es_projections::{Worker, WorkerConfig};
/// # async fn demo(pool: sqlx::PgPool, upcasters: es_core::Upcasters, balances: impl es_projections::Projector) -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::new(pool, upcasters).projection(balances)?;
/// worker.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Worker {
    pool: PgPool,
    /// Where LISTEN runs (see [`Worker::listen_on`]).
    listen: Listen,
    upcasters: Arc<Upcasters>,
    units: Vec<Unit>,
    config: WorkerConfig,
    recorder: crate::observe::Recorder,
}

/// Where a worker listens for the store's notifications.
#[derive(Clone, Debug)]
enum Listen {
    /// On a connection of the worker's own pool's server.
    OnPool,
    /// On this pool's server.
    On(PgPool),
    /// Nowhere: the worker polls.
    Never,
}

/// What a worker runs under one name.
#[derive(Clone)]
pub(crate) enum Unit {
    Projection(Arc<dyn DynProjector>),
    Consumer(Arc<dyn DynConsumer>),
}

impl Unit {
    pub(crate) fn name(&self) -> &str {
        match self {
            Unit::Projection(p) => p.name(),
            Unit::Consumer(c) => c.name(),
        }
    }

    /// What `es_projections.kind` calls it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Unit::Projection(_) => "projection",
            Unit::Consumer(c) => c.kind().as_str(),
        }
    }

    /// The version of a projection's code; None for consumers (they have no generations to build).
    pub(crate) fn version(&self) -> Option<i32> {
        match self {
            Unit::Projection(p) => Some(p.version()),
            Unit::Consumer(_) => None,
        }
    }

    /// The generations a worker keeps caught up: a projection's live one and, beside it, a
    /// built shadow (ready for a switch) and a retired one (ready for a rollback); a consumer's
    /// only generation.
    fn roles(&self) -> &'static [Role] {
        match self {
            Unit::Projection(_) => &[Role::Live, Role::Shadow, Role::Retired],
            Unit::Consumer(_) => &[Role::Live],
        }
    }

    pub(crate) fn accepts_stream(&self, stream: &StreamId) -> bool {
        match self {
            Unit::Projection(p) => p.accepts_stream(stream),
            Unit::Consumer(c) => c.accepts_stream(stream),
        }
    }
}

impl Worker {
    /// A worker on a migrated database, decoding with this registry.
    pub fn new(pool: PgPool, upcasters: Upcasters) -> Self {
        Self {
            pool,
            listen: Listen::OnPool,
            upcasters: Arc::new(upcasters),
            units: Vec::new(),
            config: WorkerConfig::default(),
            recorder: Default::default(),
        }
    }

    /// Adds a projection. Fails on an invalid or duplicate name.
    pub fn projection<P: Projector>(self, projector: P) -> Result<Self, ProjectionError> {
        let erased = erase(projector)?;
        self.add(Unit::Projection(erased))
    }

    /// Adds a reactor (or process manager) with the default [`ReactorOptions`]. Fails on an
    /// invalid or duplicate name (reactors share the projections' namespace).
    pub fn reactor<R: Reactor>(self, reactor: R) -> Result<Self, ProjectionError> {
        self.reactor_with(reactor, ReactorOptions::default())
    }

    /// Adds a reactor run with these options.
    pub fn reactor_with<R: Reactor>(
        self,
        reactor: R,
        options: ReactorOptions,
    ) -> Result<Self, ProjectionError> {
        let erased = crate::reactor::erase(reactor, options)?;
        self.add(Unit::Consumer(erased))
    }

    /// Adds a publisher to a broker (see [`crate::publisher`]). Fails on an invalid or
    /// duplicate name.
    pub fn publisher<S: crate::publisher::Sink>(
        self,
        publisher: crate::publisher::Publisher<S>,
    ) -> Result<Self, ProjectionError> {
        self.consumer(Arc::new(publisher))
    }

    /// Adds a consumer of another kind (a publisher: see [`crate::publisher`]).
    pub fn consumer(self, consumer: Arc<dyn DynConsumer>) -> Result<Self, ProjectionError> {
        crate::projector::validate_name(consumer.kind().as_str(), consumer.name())?;
        self.add(Unit::Consumer(consumer))
    }

    fn add(mut self, unit: Unit) -> Result<Self, ProjectionError> {
        if self.unit(unit.name()).is_some() {
            return Err(ProjectionError::InvalidName(crate::error::InvalidName {
                kind: "duplicate projection or consumer",
                name: unit.name().to_string(),
            }));
        }
        self.units.push(unit);
        Ok(self)
    }

    /// Uses this configuration.
    pub fn with_config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Listens for the store's notifications through `pool` instead of the worker's own pool.
    ///
    /// For a worker whose pool goes through a pooler in transaction mode (PgBouncer with
    /// `pool_mode = transaction`): LISTEN belongs to a server session, which such a pooler hands
    /// to another client after each transaction, so notifications never reach the worker and it
    /// only polls. Point this pool straight at the server, or at a session-mode pool; it holds
    /// one connection. (docs/operations.md, "Connection poolers".)
    pub fn listen_on(mut self, pool: PgPool) -> Self {
        self.listen = Listen::On(pool);
        self
    }

    /// Never listens for notifications: polls every [`WorkerConfig::poll_interval`] only.
    ///
    /// Behind a pooler in transaction mode, when no direct connection is allowed: there a LISTEN
    /// would leave a server session subscribed that the pooler then lends to other clients, whose
    /// statements fail when a notification arrives in the middle ("unexpected message:
    /// NotificationResponse").
    pub fn without_listen(mut self) -> Self {
        self.listen = Listen::Never;
        self
    }

    /// Records batches, applied events and errors into `observer`'s metrics
    /// (see [`crate::observe`]).
    pub fn with_observer(mut self, observer: &crate::observe::Observer) -> Self {
        self.recorder = observer.recorder();
        self
    }

    /// The configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The registry.
    pub fn upcasters(&self) -> &Arc<Upcasters> {
        &self.upcasters
    }

    /// The registered names: projections, reactors and publishers, in registration order.
    pub fn names(&self) -> Vec<&str> {
        self.units.iter().map(Unit::name).collect()
    }

    pub(crate) fn unit(&self, name: &str) -> Option<&Unit> {
        self.units.iter().find(|u| u.name() == name)
    }

    /// The projection `name`, for what only projections do (`action`: rebuild, read rows).
    pub(crate) fn projector(
        &self,
        name: &str,
        action: &'static str,
    ) -> Result<&Arc<dyn DynProjector>, ProjectionError> {
        match self.unit(name) {
            Some(Unit::Projection(p)) => Ok(p),
            Some(unit @ Unit::Consumer(_)) => Err(ProjectionError::NotForKind {
                name: name.to_string(),
                kind: unit.kind(),
                reason: action,
            }),
            None => Err(ProjectionError::UnknownProjection(name.to_string())),
        }
    }

    /// Carries out the dead-letter requests on `name` (see [`crate::dead_letters`]) in this
    /// process, when no other process holds its lease: takes the lease (a failed one too: it is
    /// running again afterwards, so that a worker goes on), carries them out, and releases it.
    /// `None` when another process holds the lease: it carries them out itself.
    pub async fn carry_out(&self, name: &str) -> Result<Option<CarriedOut>, ProjectionError> {
        let unit = self
            .unit(name)
            .cloned()
            .ok_or_else(|| ProjectionError::UnknownProjection(name.to_string()))?;
        checkpoint::ensure_row(&self.pool, name, unit.kind(), unit.version().unwrap_or(1)).await?;
        let owner = format!("dead-letters:{}", default_owner());
        let ttl = self.config.lease_ttl;
        let version = unit.version();
        let Some(lease) =
            checkpoint::acquire(&self.pool, name, Role::Live, version, &owner, ttl, true).await?
        else {
            return Ok(None);
        };
        let mut task = ProjectionTask::new(
            self,
            unit,
            Role::Live,
            watch::channel(false).1,
            watch::channel(0).1,
        );
        let done = task.carry_out(&lease).await;
        let released = checkpoint::release(&self.pool, &lease).await;
        match done? {
            Some(done) => {
                released?;
                Ok(Some(done))
            }
            // Lost on the way: another process holds the lease now and carries on.
            None => Ok(None),
        }
    }

    /// [`wait_for`](crate::wait_for) for a name this worker registers: fails at once, with
    /// [`ProjectionError::UnknownProjection`], for one it does not.
    pub async fn wait_for(
        &self,
        name: &str,
        position: GlobalPosition,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        if self.unit(name).is_none() {
            return Err(ProjectionError::UnknownProjection(name.to_string()));
        }
        crate::wait_for(&self.pool, name, position, timeout).await
    }

    /// Runs every projection, reactor and publisher until each has applied the log up to its
    /// head as it is when called, then stops them cleanly (their leases released) and returns
    /// that head: for batch jobs and tests. Fails with the first error a projection stopped on
    /// (at once, not at the timeout), or [`ProjectionError::Timeout`] after `timeout`. Where
    /// another process holds a lease, that process must get there.
    pub async fn catch_up(&self, timeout: Duration) -> Result<GlobalPosition, ProjectionError> {
        let head = es_postgres::log_head(&self.pool).await?;
        let waited = std::sync::Mutex::new(None);
        let caught_up = async {
            let waits = self
                .names()
                .into_iter()
                .map(|name| crate::wait_for(&self.pool, name, head, timeout));
            if let Err(error) = futures::future::try_join_all(waits).await {
                if let Ok(mut slot) = waited.lock() {
                    *slot = Some(error);
                }
            }
        };
        self.run(caught_up).await?;
        // A projection that failed stopped its task with the error `run` returned above; what
        // is left here is a timeout.
        match waited.into_inner().ok().flatten() {
            Some(error) => Err(error),
            None => Ok(head),
        }
    }

    /// Runs every projection until `shutdown` completes; see [`Worker::run_only`].
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProjectionError> {
        self.run_only(&[], shutdown).await
    }

    /// Checks that this worker's registry can read every (event type, schema version) the log
    /// holds for the types it knows ([`Upcasters::check_stored`](es_core::Upcasters::check_stored)).
    /// `run` and `rebuild` call it before applying anything.
    pub async fn check_stored(&self) -> Result<(), ProjectionError> {
        let stored = es_postgres::PgEventStore::new(self.pool.clone())
            .stored_event_types()
            .await?;
        self.upcasters.check_stored(&stored)?;
        Ok(())
    }

    /// Runs the named projections (all when `names` is empty) until `shutdown` completes. The
    /// batch in flight at shutdown commits or rolls back, never half; leases are released so a
    /// standby takes over at once. Returns the first projection error if any projection
    /// stopped on one (the others keep running until shutdown).
    pub async fn run_only(
        &self,
        names: &[String],
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProjectionError> {
        let selected: Vec<Unit> = if names.is_empty() {
            self.units.clone()
        } else {
            names
                .iter()
                .map(|n| {
                    self.unit(n)
                        .cloned()
                        .ok_or_else(|| ProjectionError::UnknownProjection(n.clone()))
                })
                .collect::<Result<_, _>>()?
        };
        self.check_stored().await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (wake_tx, wake_rx) = watch::channel(0u64);
        // In a JoinSet so that it is aborted however this future ends, dropped included: a
        // detached listener would keep its pooled connection forever.
        let mut listener = tokio::task::JoinSet::new();
        let wake = move || wake_tx.send_modify(|n| *n = n.wrapping_add(1));
        match &self.listen {
            Listen::OnPool => listener.spawn(es_postgres::listen(self.pool.clone(), wake)),
            Listen::On(pool) => listener.spawn(es_postgres::listen(pool.clone(), wake)),
            // Keeps the wake-up channel open (the tasks would take a closed one for a wake-up).
            Listen::Never => listener.spawn(async move {
                let _wake = wake;
                std::future::pending::<()>().await
            }),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for unit in selected {
            let roles = unit.roles().iter().map(|&role| {
                ProjectionTask::new(self, unit.clone(), role, stop_rx.clone(), wake_rx.clone())
            });
            tasks.spawn(run_roles(roles.collect()));
        }
        let mut first_error = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                joined = tasks.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => { first_error.get_or_insert(e); }
                    Some(Err(join)) => error!(error = %join, "projection task panicked"),
                },
            }
        }
        let _ = stop_tx.send(true);
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                first_error.get_or_insert(e);
            }
        }
        listener.abort_all();
        first_error.map_or(Ok(()), Err)
    }
}

/// Runs one unit's tasks, the live generation's first: ends when the live one ends. At shutdown
/// the others (shadow, retired) finish their batch in flight too; when the live one stopped on
/// an error they are dropped (their batch in flight rolls back), so that the unit ends as it did
/// with its live generation alone. An error of a shadow or retired generation is logged and
/// recorded on its row (`status` shows it) and leaves the live one running.
async fn run_roles(mut tasks: Vec<ProjectionTask>) -> Result<(), ProjectionError> {
    if tasks.is_empty() {
        return Ok(());
    }
    let live = tasks.remove(0);
    let mut others = tokio::task::JoinSet::new();
    for task in tasks {
        others.spawn(task.run());
    }
    let result = live.run().await;
    if result.is_ok() {
        while others.join_next().await.is_some() {}
    }
    result
}

enum Held {
    /// Shut down cleanly.
    Shutdown,
    /// Someone else holds the lease (or the projection is failed or rebuilding).
    Standby,
    /// The lease was lost mid-way (fenced); try again.
    Lost,
}

/// How often a lease holder looks for dead-letter requests while it runs.
const DEAD_LETTER_CHECK: Duration = Duration::from_secs(1);

struct ProjectionTask {
    pool: PgPool,
    upcasters: Arc<Upcasters>,
    unit: Unit,
    /// The generation this task keeps caught up.
    role: Role,
    config: WorkerConfig,
    stop: watch::Receiver<bool>,
    wake: watch::Receiver<u64>,
    /// Whether a batch committed since the last look (resets the backoff).
    committed: bool,
    /// Streams with an open dead letter, as of the lease: their later events are parked.
    blocked: HashSet<StreamId>,
    /// When dead-letter requests were last looked for.
    letters_checked: Option<Instant>,
    /// Whether it said that the generation is built by another version of the code.
    told_version: bool,
    /// When it last looked (standing by, at most once a lease length: a standby task of a
    /// projection with no shadow would otherwise query at every poll).
    version_checked: Option<Instant>,
    recorder: crate::observe::Recorder,
}

impl ProjectionTask {
    fn new(
        worker: &Worker,
        unit: Unit,
        role: Role,
        stop: watch::Receiver<bool>,
        wake: watch::Receiver<u64>,
    ) -> Self {
        Self {
            pool: worker.pool.clone(),
            upcasters: worker.upcasters.clone(),
            unit,
            role,
            config: worker.config.clone(),
            stop,
            wake,
            committed: false,
            blocked: HashSet::new(),
            letters_checked: None,
            told_version: false,
            version_checked: None,
            recorder: worker.recorder.clone(),
        }
    }

    fn name(&self) -> &str {
        self.unit.name()
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits for a wake-up, the poll interval (at most `cap`), or shutdown.
    async fn pause(&mut self, cap: Duration) {
        let wait = self.config.poll_interval.min(cap);
        tokio::select! {
            _ = self.wake.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = self.stop.changed() => {}
        }
    }

    async fn run(mut self) -> Result<(), ProjectionError> {
        let mut retry_failed = true;
        const FIRST_BACKOFF: Duration = Duration::from_millis(100);
        let mut backoff = FIRST_BACKOFF;
        while !self.stopping() {
            let result = self.hold_and_apply(retry_failed).await;
            if std::mem::take(&mut self.committed) {
                // Trouble that passed: the next blip starts from a short pause again.
                backoff = FIRST_BACKOFF;
            }
            match result {
                Ok(Held::Shutdown) => break,
                Ok(Held::Standby) => {
                    retry_failed = false;
                    let cap = self.config.lease_ttl / 3;
                    self.pause(cap).await;
                }
                Ok(Held::Lost) => {
                    self.recorder
                        .error(self.name(), self.unit.kind(), "lease_lost");
                    info!(
                        projection = self.name(),
                        "lease lost; following the live generation or standing by"
                    );
                    retry_failed = false;
                }
                Err(error) if error.is_transient() => {
                    self.recorder
                        .error(self.name(), self.unit.kind(), "transient");
                    let error = crate::error::with_causes(&error);
                    warn!(projection = self.name(), %error, ?backoff, "transient error; retrying from the checkpoint");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(error) => {
                    self.recorder.error(self.name(), self.unit.kind(), "failed");
                    return Err(error);
                }
            }
        }
        info!(projection = self.name(), "stopped");
        Ok(())
    }

    async fn hold_and_apply(&mut self, retry_failed: bool) -> Result<Held, ProjectionError> {
        let ttl = self.config.lease_ttl;
        let version = self.unit.version();
        if self.role == Role::Live {
            let kind = self.unit.kind();
            checkpoint::ensure_row(&self.pool, self.name(), kind, version.unwrap_or(1)).await?;
        }
        let Some(lease) = checkpoint::acquire(
            &self.pool,
            self.name(),
            self.role,
            version,
            &self.config.owner,
            ttl,
            retry_failed,
        )
        .await?
        else {
            self.tell_version().await?;
            return Ok(Held::Standby);
        };
        self.told_version = false;
        info!(
            projection = self.name(),
            role = self.role.as_str(),
            generation = lease.generation,
            epoch = lease.epoch,
            position = %lease.cursor.watermark,
            "lease taken; applying"
        );
        self.blocked =
            dead_letters::open_streams(&self.pool, &lease.name, lease.generation).await?;
        self.letters_checked = None;
        let result = match self.unit.clone() {
            Unit::Projection(projector) => {
                let tables = Tables::new(projector.tables(), lease.generation)?;
                self.apply_while_held(projector.as_ref(), &lease, &tables)
                    .await
            }
            Unit::Consumer(consumer) => self.consume_while_held(consumer.as_ref(), &lease).await,
        };
        match &result {
            Ok(Held::Shutdown) => {
                let _ = checkpoint::release(&self.pool, &lease).await;
            }
            Err(error) if !error.is_transient() => {
                let error = crate::error::with_causes(error);
                error!(projection = self.name(), %error, "projection stopped");
                match checkpoint::record_failure(&self.pool, &lease, &error, "failed").await {
                    Ok(true) => {}
                    Ok(false) => warn!(
                        projection = self.name(),
                        "the failure was not recorded: the lease had been lost"
                    ),
                    Err(e) => {
                        let error = crate::error::with_causes(&e);
                        warn!(projection = self.name(), %error, "could not record the failure")
                    }
                }
            }
            _ => {}
        }
        result
    }

    /// Says once, while it stands by, that the generation it would keep caught up is built by
    /// another version of the code: the operator then knows that this worker waits for a
    /// generation of its own version (or for the older binaries to keep theirs).
    async fn tell_version(&mut self) -> Result<(), ProjectionError> {
        let Some(version) = self.unit.version() else {
            return Ok(());
        };
        let ttl = self.config.lease_ttl;
        if self.told_version || self.version_checked.is_some_and(|at| at.elapsed() < ttl) {
            return Ok(());
        }
        self.version_checked = Some(Instant::now());
        let mut conn = self.pool.acquire().await?;
        let generations = checkpoint::generations(&mut conn, self.name()).await?;
        drop(conn);
        let role = self.role.as_str();
        if let Some(other) = generations
            .iter()
            .find(|g| g.role == role && g.code_version != version)
        {
            self.told_version = true;
            let what = match self.role {
                Role::Live => "it is left to workers of that version; build one for this version with `rebuild NAME --shadow` and `switch NAME`",
                Role::Shadow => "the shadow is left to workers of that version",
                Role::Retired => "the retired generation is left to workers of that version",
            };
            warn!(
                projection = self.name(),
                role,
                generation = other.generation,
                built_by = other.code_version,
                version,
                "generation built by another version of the code; {what}"
            );
        }
        Ok(())
    }

    /// Carries out dead-letter requests when it is time to look for them; false when the lease
    /// was lost on the way.
    async fn carry_out_if_due(&mut self, lease: &Lease) -> Result<bool, ProjectionError> {
        if self
            .letters_checked
            .is_some_and(|at| at.elapsed() < DEAD_LETTER_CHECK)
        {
            return Ok(true);
        }
        self.letters_checked = Some(Instant::now());
        if !dead_letters::has_work(&self.pool, &lease.name, lease.generation).await? {
            return Ok(true);
        }
        Ok(self.carry_out(lease).await?.is_some())
    }

    /// Carries out the dead-letter requests under `lease`; None when it was lost.
    async fn carry_out(&mut self, lease: &Lease) -> Result<Option<CarriedOut>, ProjectionError> {
        let stop = self.stop.clone();
        let unit = self.unit.clone();
        let redelivery: Box<dyn Redeliver + '_> = match &unit {
            Unit::Projection(projector) => Box::new(ProjectionRedelivery {
                pool: &self.pool,
                projector: projector.as_ref(),
                tables: Tables::new(projector.tables(), lease.generation)?,
                upcasters: &self.upcasters,
            }),
            Unit::Consumer(consumer) => Box::new(ConsumerRedelivery {
                pool: &self.pool,
                consumer: consumer.as_ref(),
                upcasters: &self.upcasters,
                ttl: self.config.lease_ttl,
            }),
        };
        let ttl = self.config.lease_ttl;
        let done = dead_letters::carry_out(&self.pool, lease, ttl, redelivery.as_ref(), &|| {
            *stop.borrow()
        })
        .await?;
        drop(redelivery);
        if let Some(done) = &done {
            info!(
                projection = self.name(),
                retried = done.retried,
                skipped = done.skipped,
                failed = done.failed,
                "dead-letter requests carried out"
            );
        }
        self.blocked =
            dead_letters::open_streams(&self.pool, &lease.name, lease.generation).await?;
        Ok(done)
    }

    async fn apply_while_held(
        &mut self,
        projector: &dyn DynProjector,
        lease: &Lease,
        tables: &Tables,
    ) -> Result<Held, ProjectionError> {
        let ttl = self.config.lease_ttl;
        if !views::setup(&self.pool, projector, tables, self.role).await? {
            // Its role changed since the lease was taken (a switch, a rollback, a drop).
            return Ok(Held::Lost);
        }
        let mut cursor: LogCursor = lease.cursor.clone();
        let mut renewed = Instant::now();
        // Behind until a batch comes back short of its limit: the first batch after taking the
        // lease is read at the catch-up size, as the worker may have been down.
        let mut behind = true;
        loop {
            if self.stopping() {
                return Ok(Held::Shutdown);
            }
            if !self.carry_out_if_due(lease).await? {
                return Ok(Held::Lost);
            }
            let started = Instant::now();
            let limit = if behind {
                self.config.batch_size.max(self.config.catch_up_batch_size)
            } else {
                self.config.batch_size
            };
            let mut tx = self.pool.begin().await?;
            let batch = read_batch(&mut tx, &cursor, limit).await?;
            if batch.is_idle(&cursor) {
                tx.rollback().await?;
                if renewed.elapsed() >= ttl / 3 {
                    if !checkpoint::renew(&self.pool, lease, ttl).await? {
                        return Ok(Held::Lost);
                    }
                    renewed = Instant::now();
                }
                self.pause(ttl / 3).await;
                continue;
            }
            let count = batch.events.len();
            behind = count >= limit.max(1);
            let next = batch.next.clone();
            let mut blocked = self.blocked.clone();
            let Some(outcome) = apply_and_checkpoint(
                &mut tx,
                projector,
                tables,
                &self.upcasters,
                lease,
                batch,
                self.config.error_policy,
                ttl,
                &mut blocked,
            )
            .await?
            else {
                tx.rollback().await?;
                return Ok(Held::Lost);
            };
            tx.commit().await?;
            let kind = self.unit.kind();
            self.recorder
                .batch(self.name(), kind, outcome.applied, started.elapsed());
            self.blocked = blocked;
            renewed = Instant::now();
            self.committed = true;
            debug!(
                projection = self.name(),
                generation = lease.generation,
                position = %next.watermark,
                events = count,
                applied = outcome.applied,
                parked = outcome.parked,
                holes = next.holes.len(),
                "batch committed"
            );
            cursor = next;
        }
    }
}

impl ProjectionTask {
    /// The consumer's loop (see [`crate::consumer`]): read in a short transaction, make the
    /// effects outside any, then the fenced checkpoint with the batch's dead letters.
    async fn consume_while_held(
        &mut self,
        consumer: &dyn DynConsumer,
        lease: &Lease,
    ) -> Result<Held, ProjectionError> {
        let ttl = self.config.lease_ttl;
        let batch_size = consumer
            .batch_size()
            .unwrap_or(self.config.batch_size)
            .max(1);
        let mut cursor: LogCursor = lease.cursor.clone();
        let pool = self.pool.clone();
        let mut keeper = LeaseKeeper::new(&pool, lease, ttl);
        loop {
            if self.stopping() {
                return Ok(Held::Shutdown);
            }
            if !self.carry_out_if_due(lease).await? {
                return Ok(Held::Lost);
            }
            let started = Instant::now();
            let mut tx = self.pool.begin().await?;
            let batch = read_batch(&mut tx, &cursor, batch_size).await?;
            tx.commit().await?;
            if batch.is_idle(&cursor) {
                if !keeper.renew_if_due().await? {
                    return Ok(Held::Lost);
                }
                self.pause(ttl / 3).await;
                continue;
            }
            let next = batch.next.clone();
            let delivered: Vec<i64> = batch.events.iter().map(|e| e.global_position.0).collect();
            let last_event_at = batch.events.iter().map(|e| e.recorded_at).max();
            let count = batch.events.len();
            let mut blocked = self.blocked.clone();
            let mut context = ConsumerContext {
                pool: &self.pool,
                upcasters: &self.upcasters,
                generation: lease.generation,
                blocked: &mut blocked,
                keep_alive: &mut keeper,
                parked: Vec::new(),
                stop: None,
            };
            let span = crate::observe::batch_span(self.name(), self.unit.kind(), lease, &delivered);
            let outcome = tracing::Instrument::instrument(
                consumer.handle_batch(batch.events, &mut context),
                span,
            )
            .await?;
            let (parked, stop) = (std::mem::take(&mut context.parked), context.stop.take());
            drop(context);
            if keeper.lost() {
                return Ok(Held::Lost);
            }
            let mut tx = self.pool.begin().await?;
            if !checkpoint::hold(&mut tx, lease).await? {
                tx.rollback().await?;
                return Ok(Held::Lost);
            }
            for letter in &parked {
                dead_letters::park(&mut tx, &lease.name, lease.generation, letter).await?;
            }
            let record = BatchRecord {
                cursor: &next,
                delivered: &delivered,
                applied: outcome.applied,
                last_event_at,
            };
            if !checkpoint::save(&mut tx, lease, record, ttl).await? {
                tx.rollback().await?;
                return Ok(Held::Lost);
            }
            tx.commit().await?;
            let kind = self.unit.kind();
            self.recorder
                .batch(self.name(), kind, outcome.applied, started.elapsed());
            keeper.renewed_now();
            self.blocked = blocked;
            self.committed = true;
            debug!(
                projection = self.name(),
                kind = self.unit.kind(),
                position = %next.watermark,
                events = count,
                applied = outcome.applied,
                parked = outcome.parked,
                "batch done"
            );
            cursor = next;
            if let Some(error) = stop {
                return Err(ProjectionError::Failed {
                    projection: self.name().to_string(),
                    error,
                });
            }
        }
    }
}

/// Renews a consumer's lease during long batches.
struct LeaseKeeper<'a> {
    pool: &'a PgPool,
    lease: &'a Lease,
    ttl: Duration,
    renewed: Instant,
    lost: bool,
}

impl<'a> LeaseKeeper<'a> {
    fn new(pool: &'a PgPool, lease: &'a Lease, ttl: Duration) -> Self {
        Self {
            pool,
            lease,
            ttl,
            renewed: Instant::now(),
            lost: false,
        }
    }

    /// A checkpoint write extended the lease.
    fn renewed_now(&mut self) {
        self.renewed = Instant::now();
    }
}

#[async_trait]
impl KeepAlive for LeaseKeeper<'_> {
    async fn renew_if_due(&mut self) -> Result<bool, ProjectionError> {
        if self.lost {
            return Ok(false);
        }
        if self.renewed.elapsed() >= self.ttl / 3 {
            if !checkpoint::renew(self.pool, self.lease, self.ttl).await? {
                self.lost = true;
                return Ok(false);
            }
            self.renewed = Instant::now();
        }
        Ok(true)
    }

    fn lost(&self) -> bool {
        self.lost
    }

    fn period(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(1))
    }
}

/// Redelivers a consumer's dead letter: the effect made outside any transaction, then the
/// letter closed (or its new failure recorded) in a transaction fenced by the lease.
struct ConsumerRedelivery<'a> {
    pool: &'a PgPool,
    consumer: &'a dyn DynConsumer,
    upcasters: &'a Upcasters,
    ttl: Duration,
}

#[async_trait]
impl Redeliver for ConsumerRedelivery<'_> {
    async fn redeliver(
        &self,
        lease: &Lease,
        letter: &DeadLetter,
        event: RecordedEvent,
    ) -> Result<Option<bool>, ProjectionError> {
        let mut keeper = LeaseKeeper::new(self.pool, lease, self.ttl);
        let mut none_blocked = HashSet::new();
        let mut context = ConsumerContext {
            pool: self.pool,
            upcasters: self.upcasters,
            generation: lease.generation,
            blocked: &mut none_blocked,
            keep_alive: &mut keeper,
            parked: Vec::new(),
            stop: None,
        };
        self.consumer
            .handle_batch(vec![event], &mut context)
            .await?;
        let failure = context.parked.pop();
        drop(context);
        if keeper.lost() {
            return Ok(None);
        }
        let mut tx = self.pool.begin().await?;
        if !checkpoint::hold(&mut tx, lease).await? {
            return Ok(None);
        }
        let ok = match failure {
            None => {
                dead_letters::retried(&mut tx, letter, &lease.owner).await?;
                true
            }
            Some(failure) => {
                dead_letters::failed_again(&mut tx, letter, &failure.error, failure.attempts)
                    .await?;
                false
            }
        };
        tx.commit().await?;
        Ok(Some(ok))
    }
}
