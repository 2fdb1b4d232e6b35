//! Errors of the projection runtime. Each names the projection and, where there is one, the
//! event, so that an operator can find it.

use es_core::{BoxError, DecodeError, GlobalPosition, StoreError};

/// An error from a projector's own code (`setup`, `apply`, `reset`).
pub type ProjectorError = BoxError;

/// A name that cannot be used for a projection or a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: use 1 to 40 lowercase letters, digits and underscores, starting with a letter")]
pub struct InvalidName {
    /// What the name was for ("projection", "table").
    pub kind: &'static str,
    /// The rejected name.
    pub name: String,
}

/// The event a projection stopped on, parked, or never received. It replaced this crate's
/// `EventRef`, which lacked the schema version.
pub use es_core::EventLocation;

/// Errors of workers, rebuilds and status queries.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A stored event could not be decoded for this projection (unknown type, no upcaster path,
    /// malformed payload). The projection stopped with its checkpoint before the event: register
    /// the type or the upcaster and restart, or use the dead-letter policy.
    #[error("projection {projection} cannot decode an event: {source}")]
    Decode {
        /// The projection.
        projection: String,
        /// What went wrong, naming the event.
        #[source]
        source: DecodeError,
    },
    /// The projector's `apply` failed on this event. The projection stopped with its checkpoint
    /// before the batch: fix the projector (or the data) and restart.
    #[error("projection {projection} failed to apply {event}: {source}")]
    Handler {
        /// The projection.
        projection: String,
        /// The event it failed on, as the projector received it: its type and schema version
        /// are the current ones, after any upcasting.
        event: EventLocation,
        /// The projector's error.
        #[source]
        source: ProjectorError,
    },
    /// The projector's `setup` or `reset` failed.
    #[error("projection {projection}: {action} failed: {source}")]
    Projector {
        /// The projection.
        projection: String,
        /// What it was doing.
        action: &'static str,
        /// The projector's error.
        #[source]
        source: ProjectorError,
    },
    /// Another process holds the projection's lease (or took it over): this process must not
    /// apply. Not an error for a standby worker; for a rebuild, stop the workers or use a
    /// shadow rebuild.
    #[error("projection {projection} is leased by {owner}")]
    LeaseHeld {
        /// The projection.
        projection: String,
        /// Who holds it.
        owner: String,
    },
    /// The projection stopped on an error (shown by `status`) and will not move until it is fixed
    /// and a worker restarted.
    #[error("{projection} has stopped on an error: {error}")]
    Failed {
        /// The projection.
        projection: String,
        /// Its recorded error.
        error: String,
    },
    /// The projection has no checkpoint yet: no worker or rebuild has run it.
    #[error("projection {0} has no checkpoint yet: run a worker or a rebuild first")]
    NoCheckpoint(String),
    /// Nothing of that name has a checkpoint: no worker has run it yet, or the name is wrong.
    #[error("{projection} has no checkpoint: no worker has run it (is the name right? {})", if known.is_empty() { "there are no checkpoints yet".to_string() } else { format!("these have one: {}", known.join(", ")) })]
    NotStarted {
        /// The name waited on.
        projection: String,
        /// The names that have a checkpoint.
        known: Vec<String>,
    },
    /// No projection of that name is registered with this binary.
    #[error("no projection, reactor or publisher named {0} is registered")]
    UnknownProjection(String),
    /// A name is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// Waiting for a projection to reach a position took too long.
    #[error("projection {projection} did not reach position {position} within {timeout:?}")]
    Timeout {
        /// The projection.
        projection: String,
        /// The position waited for.
        position: GlobalPosition,
        /// How long we waited.
        timeout: std::time::Duration,
    },
    /// A name is registered as one kind (projection, reactor, publisher) while the database
    /// holds the checkpoint of another kind under it: two different things must not share a
    /// checkpoint. Rename one of them.
    #[error("{name} is registered as a {registered}, but its checkpoint belongs to a {stored}: give one of them another name")]
    KindMismatch {
        /// The name.
        name: String,
        /// What this binary registers under it.
        registered: String,
        /// What the stored checkpoint row is for.
        stored: String,
    },
    /// The operation does not apply to this kind (a reactor or publisher is never rebuilt: its
    /// effects are outside the database, and a replay would repeat them).
    #[error("{name} is a {kind}: {reason}")]
    NotForKind {
        /// The name.
        name: String,
        /// Its kind.
        kind: &'static str,
        /// Why not, and what to do instead.
        reason: &'static str,
    },
    /// A generation was built by another version of the projector's code
    /// ([`Projector::VERSION`](crate::Projector::VERSION)) than this binary's: applying it with
    /// this code would mix rows of two versions. Run the command with a binary of that version,
    /// or build a generation for this one (`rebuild NAME --shadow`).
    #[error("{projection}'s {role} generation {generation} is built by version {built} of its code, this binary has version {ours}: {hint}")]
    VersionMismatch {
        /// The projection.
        projection: String,
        /// The generation's role (`live`, `shadow`, `retired`).
        role: &'static str,
        /// The generation.
        generation: i32,
        /// The version it is built by.
        built: i32,
        /// This binary's version.
        ours: i32,
        /// What to do.
        hint: &'static str,
    },
    /// A blue/green command cannot go on from the generations as they are (no shadow to switch
    /// to, a shadow still being built, nothing to roll back to); the message says what to do.
    #[error("{projection}: {reason}")]
    Generations {
        /// The projection.
        projection: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A projector's [`VERSION`](crate::Projector::VERSION) is outside 1 to 2^31 - 1.
    #[error("projection {projection} declares version {version}: use 1 to 2147483647")]
    InvalidVersion {
        /// The projection.
        projection: String,
        /// The declared version.
        version: u32,
    },
    /// The log holds events this binary cannot read: a stored (event type, schema version)
    /// with no upcaster path to the current version. Found at start-up, before any event was
    /// applied; register the missing step (or deploy the newer code) and restart.
    #[error("the log holds events this worker cannot read: {0}")]
    Unreadable(#[from] es_core::UpcasterChainError),
    /// The database failed. Transient failures are retried by workers with backoff.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ProjectionError {
    /// Whether retrying later may succeed (a lost connection, a restarting server).
    pub fn is_transient(&self) -> bool {
        matches!(self, ProjectionError::Store(e) if e.is_transient())
    }

    /// An error of a projector's `setup` or `reset`: transient (retried) when a transient database
    /// error caused it (a connection lost mid-setup), else [`ProjectionError::Projector`].
    pub(crate) fn projector(
        projection: &str,
        action: &'static str,
        source: ProjectorError,
    ) -> Self {
        if es_postgres::error::is_transient_cause(source.as_ref()) {
            ProjectionError::Store(StoreError::storage(
                format!("projection {projection}: {action} hit a transient database error"),
                true,
                source,
            ))
        } else {
            ProjectionError::Projector {
                projection: projection.to_string(),
                action,
                source,
            }
        }
    }
}

/// `error` and each of its causes, joined by ": ": for a log line or a recorded failure, which
/// would otherwise say "storage error: projection bookkeeping" without what PostgreSQL said.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let shown = c.to_string();
        // Some errors repeat their cause in their own message.
        if !text.ends_with(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        cause = c.source();
    }
    text
}

impl From<sqlx::Error> for ProjectionError {
    fn from(error: sqlx::Error) -> Self {
        ProjectionError::Store(es_postgres::error::storage("projection bookkeeping", error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_joined_once() {
        let store = ProjectionError::from(sqlx::Error::PoolTimedOut);
        let text = with_causes(&store);
        assert!(
            text.starts_with("storage error: projection bookkeeping: ")
                && text.contains("pool timed out"),
            "{text}"
        );
        assert_eq!(text.matches("pool timed out").count(), 1, "{text}");
    }
}
