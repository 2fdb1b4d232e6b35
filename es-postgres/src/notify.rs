//! Waking workers after appends: NOTIFY on [`NOTIFY_CHANNEL`], coalesced, after commit; and the
//! other end, [`listen`], which workers run. Both ends of the channel live here.
//!
//! A notification is only a wake-up call. Notifications sent while a listener's connection is
//! down are lost, so correctness never depends on them: workers read the log by checkpoint and
//! poll as a fallback. The notifier sends from a background task on its own pooled connection
//! rather than inside the append's transaction, because a transaction that issues NOTIFY takes
//! a database-wide lock at commit, which would serialise every appending writer's commit.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tracing::debug;

/// The least time between two notifications. A NOTIFY is a transaction of its own (with a commit
/// to flush), so under a stream of appends one per few milliseconds is plenty: the first append
/// after a quiet spell is notified at once, and workers keep reading while batches are full.
const MIN_GAP: Duration = Duration::from_millis(5);

/// The channel the store notifies after appends.
pub const NOTIFY_CHANNEL: &str = "es_events";

/// Coalescing sender of wake-ups: many appends in quick succession send few notifications.
#[derive(Clone, Debug)]
pub(crate) struct Notifier {
    wake: mpsc::Sender<()>,
}

impl Notifier {
    /// Starts the sending task on the current tokio runtime, if there is one.
    pub(crate) fn start(pool: PgPool) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        // Capacity one: a wake-up already pending covers every append made before it is sent.
        let (wake, mut pending) = mpsc::channel::<()>(1);
        runtime.spawn(async move {
            while pending.recv().await.is_some() {
                // A lost wake-up is harmless, so its commit need not wait for the WAL flush.
                let notify =
                    "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')";
                if let Err(error) = sqlx::query(notify)
                    .bind(NOTIFY_CHANNEL)
                    .execute(&pool)
                    .await
                {
                    // Workers poll as a fallback; a lost wake-up only adds latency.
                    debug!(%error, "NOTIFY failed; workers will find the events by polling");
                }
                // Appends made meanwhile leave one wake-up pending, sent right after the gap.
                tokio::time::sleep(MIN_GAP).await;
            }
        });
        Some(Self { wake })
    }

    /// Asks for a notification; returns at once.
    pub(crate) fn wake(&self) {
        let _ = self.wake.try_send(());
    }
}

/// Calls `wake` for every notification on [`NOTIFY_CHANNEL`], forever (abort the task to stop).
///
/// sqlx's listener reconnects by itself on the next `recv` after its connection is lost, so this
/// only retries (once a second) the first connection and a `recv` whose reconnection failed.
/// Notifications sent while it is disconnected are lost: callers must poll as well.
pub async fn listen(pool: PgPool, mut wake: impl FnMut()) {
    let mut listener = loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(NOTIFY_CHANNEL).await {
                Ok(()) => break listener,
                Err(error) => debug!(%error, "LISTEN failed; polling until it succeeds"),
            },
            Err(error) => debug!(%error, "notification listener cannot connect; polling"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    loop {
        match listener.recv().await {
            Ok(_) => wake(),
            Err(error) => {
                debug!(%error, "notification listener lost; polling until it reconnects");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
