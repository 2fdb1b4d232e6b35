//! Mapping sqlx errors to es-core's typed errors.

use es_core::StoreError;

/// The name of the unique constraint that makes concurrent appends conflict.
pub const STREAM_VERSION_CONSTRAINT: &str = "es_events_stream_version_key";

/// Whether an error is a violation of our (stream_id, stream_version) constraint, matched by
/// name: any other unique violation (a duplicate event id, a user's own constraint) is not a
/// concurrency conflict.
pub fn is_stream_version_conflict(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && db.constraint() == Some(STREAM_VERSION_CONSTRAINT)
        }
        _ => false,
    }
}

/// The name of the unique constraint on event ids.
pub const EVENT_ID_CONSTRAINT: &str = "es_events_event_id_key";

/// Whether an error is a violation of the unique event id: the events were already stored.
pub fn is_event_id_conflict(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && db.constraint() == Some(EVENT_ID_CONSTRAINT)
        }
        _ => false,
    }
}

/// Whether retrying the same call may succeed: lost connections, restarts, pool exhaustion,
/// serialization failures, deadlocks, and lock or statement timeouts.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            let code = code.as_ref();
            code.starts_with("08") // connection exception
                || code == "40001" // serialization failure
                || code == "40P01" // deadlock
                || code == "57P01" // admin shutdown
                || code == "57P02" // crash shutdown
                || code == "57P03" // cannot connect now
                || code == "53300" // too many connections
                || code == "55P03" // lock not available (lock_timeout)
                || code == "57014" // query canceled (statement_timeout)
        }),
        _ => false,
    }
}

/// Wraps a sqlx error as a storage error, saying what was being done.
pub fn storage(message: impl Into<String>, error: sqlx::Error) -> StoreError {
    let transient = is_transient(&error);
    StoreError::storage(message, transient, error)
}

/// Whether an error raised by user code (a projector's `apply`) is, or was caused by, a
/// transient database error: walks the source chain looking for a sqlx error or a store error.
pub fn is_transient_cause(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(sqlx) = e.downcast_ref::<sqlx::Error>() {
            return is_transient(sqlx);
        }
        if let Some(store) = e.downcast_ref::<StoreError>() {
            return store.is_transient();
        }
        current = e.source();
    }
    false
}

/// Whether an error is, or was caused by, PostgreSQL refusing for want of a privilege
/// (SQLSTATE 42501 `insufficient_privilege`, raised by `aclcheck_error` in
/// `src/backend/catalog/aclchk.c`): walks the source chain looking for a sqlx error.
pub fn is_permission_denied(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
            return db.code().is_some_and(|code| code == "42501");
        }
        current = e.source();
    }
    false
}
