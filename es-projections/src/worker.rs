//! The worker: runs projections, each in its own task, tailing the log from its checkpoint.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::{EventStore, Upcasters};
use es_postgres::{read_batch, LogCursor};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::checkpoint::{self, Lease};
use crate::engine::{apply_and_checkpoint, erase, DynProjector, ErrorPolicy};
use crate::error::ProjectionError;
use crate::projector::{Projector, Tables};
use crate::views;

/// How a worker runs its projections.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The most events read and applied in one transaction.
    pub batch_size: usize,
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
    upcasters: Arc<Upcasters>,
    projectors: Vec<Arc<dyn DynProjector>>,
    config: WorkerConfig,
}

impl Worker {
    /// A worker on a migrated database, decoding with this registry.
    pub fn new(pool: PgPool, upcasters: Upcasters) -> Self {
        Self {
            pool,
            upcasters: Arc::new(upcasters),
            projectors: Vec::new(),
            config: WorkerConfig::default(),
        }
    }

    /// Adds a projection. Fails on an invalid or duplicate name.
    pub fn projection<P: Projector>(mut self, projector: P) -> Result<Self, ProjectionError> {
        let erased = erase(projector)?;
        if self.find(erased.name()).is_some() {
            return Err(ProjectionError::InvalidName(crate::error::InvalidName {
                kind: "duplicate projection",
                name: erased.name().to_string(),
            }));
        }
        self.projectors.push(erased);
        Ok(self)
    }

    /// Uses this configuration.
    pub fn with_config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
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

    /// The registered projection names.
    pub fn names(&self) -> Vec<&str> {
        self.projectors.iter().map(|p| p.name()).collect()
    }

    pub(crate) fn find(&self, name: &str) -> Option<&Arc<dyn DynProjector>> {
        self.projectors.iter().find(|p| p.name() == name)
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
        let selected: Vec<Arc<dyn DynProjector>> = if names.is_empty() {
            self.projectors.clone()
        } else {
            names
                .iter()
                .map(|n| {
                    self.find(n)
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
        listener.spawn(es_postgres::listen(self.pool.clone(), move || {
            wake_tx.send_modify(|n| *n = n.wrapping_add(1))
        }));
        let mut tasks = tokio::task::JoinSet::new();
        for projector in selected {
            let task = ProjectionTask {
                pool: self.pool.clone(),
                upcasters: self.upcasters.clone(),
                projector,
                config: self.config.clone(),
                stop: stop_rx.clone(),
                wake: wake_rx.clone(),
                committed: false,
            };
            tasks.spawn(task.run());
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

enum Held {
    /// Shut down cleanly.
    Shutdown,
    /// Someone else holds the lease (or the projection is failed or rebuilding).
    Standby,
    /// The lease was lost mid-way (fenced); try again.
    Lost,
}

struct ProjectionTask {
    pool: PgPool,
    upcasters: Arc<Upcasters>,
    projector: Arc<dyn DynProjector>,
    config: WorkerConfig,
    stop: watch::Receiver<bool>,
    wake: watch::Receiver<u64>,
    /// Whether a batch committed since the last look (resets the backoff).
    committed: bool,
}

impl ProjectionTask {
    fn name(&self) -> &str {
        self.projector.name()
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
                    info!(
                        projection = self.name(),
                        "lease lost; following the live generation or standing by"
                    );
                    retry_failed = false;
                }
                Err(error) if error.is_transient() => {
                    warn!(projection = self.name(), %error, ?backoff, "transient error; retrying from the checkpoint");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(error) => return Err(error),
            }
        }
        info!(projection = self.name(), "stopped");
        Ok(())
    }

    async fn hold_and_apply(&mut self, retry_failed: bool) -> Result<Held, ProjectionError> {
        let ttl = self.config.lease_ttl;
        checkpoint::ensure_row(&self.pool, self.name()).await?;
        let Some(lease) = checkpoint::acquire(
            &self.pool,
            self.name(),
            &self.config.owner,
            ttl,
            retry_failed,
        )
        .await?
        else {
            return Ok(Held::Standby);
        };
        info!(
            projection = self.name(),
            generation = lease.generation,
            epoch = lease.epoch,
            position = %lease.cursor.watermark,
            "lease taken; applying"
        );
        let tables = Tables::new(self.projector.tables(), lease.generation)?;
        let result = self.apply_while_held(&lease, &tables).await;
        match &result {
            Ok(Held::Shutdown) => {
                let _ = checkpoint::release(&self.pool, &lease).await;
            }
            Err(error) if !error.is_transient() => {
                error!(projection = self.name(), %error, "projection stopped");
                match checkpoint::record_failure(&self.pool, &lease, &error.to_string(), "failed")
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => warn!(
                        projection = self.name(),
                        "the failure was not recorded: the lease had been lost"
                    ),
                    Err(e) => {
                        warn!(projection = self.name(), error = %e, "could not record the failure")
                    }
                }
            }
            _ => {}
        }
        result
    }

    async fn apply_while_held(
        &mut self,
        lease: &Lease,
        tables: &Tables,
    ) -> Result<Held, ProjectionError> {
        let ttl = self.config.lease_ttl;
        views::setup(&self.pool, self.projector.as_ref(), tables, true).await?;
        let mut cursor: LogCursor = lease.cursor.clone();
        let mut renewed = Instant::now();
        loop {
            if self.stopping() {
                return Ok(Held::Shutdown);
            }
            let mut tx = self.pool.begin().await?;
            let batch = read_batch(&mut tx, &cursor, self.config.batch_size).await?;
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
            let next = batch.next.clone();
            let Some(outcome) = apply_and_checkpoint(
                &mut tx,
                self.projector.as_ref(),
                tables,
                &self.upcasters,
                lease,
                batch,
                self.config.error_policy,
                ttl,
            )
            .await?
            else {
                tx.rollback().await?;
                return Ok(Held::Lost);
            };
            tx.commit().await?;
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
