//! Applying one batch of stored events to one projector: decode (upcasting first), apply in a
//! savepoint, and when the batch fails find the event that broke it; then the fenced checkpoint
//! (`apply_and_checkpoint`, the one path of workers and rebuilds alike).
//!
//! Events on streams the projector does not accept are skipped before decoding: a projector
//! need not know the event types of other streams (other bounded contexts may share the log).
//! An event it does accept but cannot decode stops it (or is parked under the dead-letter
//! policy; later events of its stream are then parked behind it, see [`crate::dead_letters`]). A transient database error raised inside `apply` (deadlock, serialization failure,
//! lock or statement timeout, lost connection) is neither a failure nor a dead letter: the batch
//! is rolled back and retried from the checkpoint.
//!
//! The caller owns the transaction; nothing here commits.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use es_core::{EventEnvelope, EventLocation, RecordedEvent, StoreError, StreamId, Upcasters};
use es_postgres::LogBatch;
use sqlx::PgConnection;
use tracing::warn;

use crate::checkpoint::{self, BatchRecord, Lease};
use crate::dead_letters::{self, Cause, DeadLetter, ParkedEvent, Redeliver};
use crate::error::{ProjectionError, ProjectorError};
use crate::projector::{validate_name, Projector, Tables};

/// What to do with an event a projection cannot decode or apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Stop the projection, naming the event; its checkpoint stays before the batch (default).
    #[default]
    Stop,
    /// Park the event in `es_dead_letters` and apply the rest; later events of its stream are
    /// parked behind it, in order, until it is retried or skipped. Explicit opt-in only.
    DeadLetter,
}

/// The result of applying a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events the projector applied.
    pub applied: usize,
    /// Events parked under the dead-letter policy.
    pub parked: usize,
}

/// A projector with its event type erased, so that one worker runs many.
#[async_trait]
pub trait DynProjector: Send + Sync + 'static {
    /// The projection name.
    fn name(&self) -> &str;
    /// The version of its code ([`Projector::VERSION`]), checked to fit the stored column.
    fn version(&self) -> i32;
    /// Its logical tables.
    fn tables(&self) -> &[&'static str];
    /// Whether it reads events of this stream.
    fn accepts_stream(&self, stream: &StreamId) -> bool;
    /// Creates its tables.
    async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError>;
    /// Empties its tables.
    async fn reset(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError>;
    /// Decodes and applies a batch (see the module docs). `blocked`: the streams with an open
    /// dead letter, whose events are parked behind it (the dead-letter policy adds to it).
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        upcasters: &Upcasters,
        events: Vec<RecordedEvent>,
        policy: ErrorPolicy,
        blocked: &mut HashSet<StreamId>,
    ) -> Result<BatchOutcome, ProjectionError>;
}

/// Checks a projector's names and erases its event type.
pub fn erase<P: Projector>(projector: P) -> Result<Arc<dyn DynProjector>, ProjectionError> {
    validate_name("projection", projector.name())?;
    if P::VERSION == 0 || i32::try_from(P::VERSION).is_err() {
        return Err(ProjectionError::InvalidVersion {
            projection: projector.name().to_string(),
            version: P::VERSION,
        });
    }
    for table in projector.tables() {
        validate_name("table", table)?;
    }
    Ok(Arc::new(Erased(projector)))
}

struct Erased<P>(P);

/// The event an envelope came from, at the current schema version of its type: `decode` brought
/// it there, so the registry has that version. Built only when something fails: not per event.
fn envelope_location<E>(
    projection: &str,
    upcasters: &Upcasters,
    envelope: &EventEnvelope<E>,
) -> Result<EventLocation, ProjectionError> {
    let Some(schema_version) = upcasters.current_version(&envelope.event_type) else {
        // Unreachable while `Upcasters::decode` checks the version; if it ever stops, say so
        // rather than name the event with a made-up version.
        return Err(ProjectionError::Store(StoreError::storage_message(
            format!(
                "projection {projection}: decoded event type {} has no current schema version",
                envelope.event_type
            ),
            false,
        )));
    };
    Ok(EventLocation {
        stream: envelope.stream_id.clone(),
        stream_version: envelope.stream_version,
        position: envelope.global_position,
        event_type: envelope.event_type.clone(),
        schema_version,
    })
}

async fn savepoint(conn: &mut PgConnection, sql: &str) -> Result<(), ProjectionError> {
    sqlx::query(sql).execute(&mut *conn).await?;
    Ok(())
}

async fn park(
    conn: &mut PgConnection,
    projection: &str,
    tables: &Tables,
    parked: ParkedEvent,
    blocked: &mut HashSet<StreamId>,
) -> Result<(), ProjectionError> {
    let event = &parked.event;
    warn!(
        projection,
        stream = %event.stream,
        position = %event.position,
        event_type = %event.event_type,
        schema_version = event.schema_version,
        error = %parked.error,
        cause = ?parked.cause,
        "parking event in es_dead_letters"
    );
    dead_letters::park(conn, projection, tables.generation(), &parked).await?;
    blocked.insert(event.stream.clone());
    Ok(())
}

fn failed(event: EventLocation, error: &dyn std::fmt::Display) -> ParkedEvent {
    ParkedEvent {
        event,
        cause: Cause::Failed,
        error: error.to_string(),
        attempts: 1,
    }
}

fn held(event: EventLocation) -> ParkedEvent {
    let error = format!("held behind an open dead letter of stream {}", event.stream);
    ParkedEvent {
        event,
        cause: Cause::Held,
        error,
        attempts: 0,
    }
}

/// A projector error caused by a transient database failure: retried from the checkpoint.
fn transient(projection: &str, error: ProjectorError) -> ProjectionError {
    ProjectionError::Store(StoreError::storage(
        format!("projection {projection}: a transient database error while applying"),
        true,
        error,
    ))
}

/// Applies a batch read by the log reader and writes the checkpoint after it, both in `tx` and
/// fenced by `lease` (`checkpoint::hold`, then `checkpoint::save`). None when the lease was lost:
/// the caller must roll back. The caller commits. Runs in a `batch` span: projection,
/// generation, the positions delivered (lowest, highest) and how many.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(name = "batch", skip_all, fields(
    projection = projector.name(),
    generation = lease.generation,
    first_position = batch.events.iter().map(|e| e.global_position.0).min(),
    last_position = batch.events.iter().map(|e| e.global_position.0).max(),
    // Signed, so that the OTLP export sends an integer (it sends an unsigned one as text).
    events = i64::try_from(batch.events.len()).unwrap_or(i64::MAX),
))]
pub(crate) async fn apply_and_checkpoint(
    tx: &mut PgConnection,
    projector: &dyn DynProjector,
    tables: &Tables,
    upcasters: &Upcasters,
    lease: &Lease,
    batch: LogBatch,
    policy: ErrorPolicy,
    ttl: Duration,
    blocked: &mut HashSet<StreamId>,
) -> Result<Option<BatchOutcome>, ProjectionError> {
    if !checkpoint::hold(tx, lease).await? {
        return Ok(None);
    }
    let delivered: Vec<i64> = batch.events.iter().map(|e| e.global_position.0).collect();
    let last_event_at = batch.events.iter().map(|e| e.recorded_at).max();
    let outcome = projector
        .apply_batch(tx, tables, upcasters, batch.events, policy, blocked)
        .await?;
    let record = BatchRecord {
        cursor: &batch.next,
        delivered: &delivered,
        applied: outcome.applied,
        last_event_at,
    };
    if !checkpoint::save(tx, lease, record, ttl).await? {
        return Ok(None);
    }
    Ok(Some(outcome))
}

#[async_trait]
impl<P: Projector> DynProjector for Erased<P> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn version(&self) -> i32 {
        // Checked by `erase`.
        i32::try_from(P::VERSION).unwrap_or(i32::MAX)
    }

    fn tables(&self) -> &[&'static str] {
        self.0.tables()
    }

    fn accepts_stream(&self, stream: &StreamId) -> bool {
        self.0.accepts_stream(stream)
    }

    async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError> {
        self.0.setup(conn, tables).await
    }

    async fn reset(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError> {
        self.0.reset(conn, tables).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        upcasters: &Upcasters,
        events: Vec<RecordedEvent>,
        policy: ErrorPolicy,
        blocked: &mut HashSet<StreamId>,
    ) -> Result<BatchOutcome, ProjectionError> {
        let name = self.0.name();
        let mut outcome = BatchOutcome::default();
        let mut decoded = Vec::with_capacity(events.len());
        for event in events {
            if !self.0.accepts_stream(&event.stream_id) {
                continue;
            }
            if blocked.contains(&event.stream_id) {
                park(
                    conn,
                    name,
                    tables,
                    held(dead_letters::location(&event)),
                    blocked,
                )
                .await?;
                outcome.parked += 1;
                continue;
            }
            match upcasters.decode::<P::Event>(event) {
                Ok(Some(envelope)) => decoded.push(envelope),
                Ok(None) => {}
                Err(error) if policy == ErrorPolicy::Stop => {
                    return Err(ProjectionError::Decode {
                        projection: name.to_string(),
                        source: error,
                    })
                }
                Err(error) => {
                    park(
                        conn,
                        name,
                        tables,
                        failed(error.at.clone(), &error),
                        blocked,
                    )
                    .await?;
                    outcome.parked += 1;
                }
            }
        }
        if decoded.is_empty() {
            return Ok(outcome);
        }
        savepoint(conn, "SAVEPOINT es_batch").await?;
        match self.0.apply(conn, tables, &decoded).await {
            Ok(()) => {
                savepoint(conn, "RELEASE SAVEPOINT es_batch").await?;
                outcome.applied += decoded.len();
                return Ok(outcome);
            }
            Err(error) if es_postgres::error::is_transient_cause(error.as_ref()) => {
                return Err(transient(name, error))
            }
            Err(_) => savepoint(conn, "ROLLBACK TO SAVEPOINT es_batch").await?,
        }
        // The batch failed: apply event by event to find the culprit (and, under the
        // dead-letter policy, to apply everything else).
        for envelope in decoded {
            if blocked.contains(&envelope.stream_id) {
                let event = envelope_location(name, upcasters, &envelope)?;
                park(conn, name, tables, held(event), blocked).await?;
                outcome.parked += 1;
                continue;
            }
            savepoint(conn, "SAVEPOINT es_event").await?;
            match self
                .0
                .apply(conn, tables, std::slice::from_ref(&envelope))
                .await
            {
                Ok(()) => {
                    savepoint(conn, "RELEASE SAVEPOINT es_event").await?;
                    outcome.applied += 1;
                }
                Err(error) if es_postgres::error::is_transient_cause(error.as_ref()) => {
                    return Err(transient(name, error))
                }
                Err(error) => {
                    savepoint(conn, "ROLLBACK TO SAVEPOINT es_event").await?;
                    let event = envelope_location(name, upcasters, &envelope)?;
                    if policy == ErrorPolicy::Stop {
                        return Err(ProjectionError::Handler {
                            projection: name.to_string(),
                            event,
                            source: error,
                        });
                    }
                    park(conn, name, tables, failed(event, &error), blocked).await?;
                    outcome.parked += 1;
                }
            }
        }
        Ok(outcome)
    }
}

/// Redelivers a projection's dead letter: the event applied in a transaction fenced by the
/// lease, the letter closed (or its new failure recorded) in the same transaction.
pub(crate) struct ProjectionRedelivery<'a> {
    pub pool: &'a sqlx::PgPool,
    pub projector: &'a dyn DynProjector,
    pub tables: Tables,
    pub upcasters: &'a Upcasters,
}

#[async_trait]
impl Redeliver for ProjectionRedelivery<'_> {
    async fn redeliver(
        &self,
        lease: &Lease,
        letter: &DeadLetter,
        event: RecordedEvent,
    ) -> Result<Option<bool>, ProjectionError> {
        let mut tx = self.pool.begin().await?;
        if !checkpoint::hold(&mut tx, lease).await? {
            return Ok(None);
        }
        savepoint(&mut tx, "SAVEPOINT es_retry").await?;
        let mut none_blocked = HashSet::new();
        let applied = self
            .projector
            .apply_batch(
                &mut tx,
                &self.tables,
                self.upcasters,
                vec![event],
                ErrorPolicy::Stop,
                &mut none_blocked,
            )
            .await;
        let ok = match applied {
            Ok(_) => {
                savepoint(&mut tx, "RELEASE SAVEPOINT es_retry").await?;
                dead_letters::retried(&mut tx, letter, &lease.owner).await?;
                true
            }
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                savepoint(&mut tx, "ROLLBACK TO SAVEPOINT es_retry").await?;
                dead_letters::failed_again(&mut tx, letter, &error.to_string(), 1).await?;
                false
            }
        };
        tx.commit().await?;
        Ok(Some(ok))
    }
}
