//! Applying one batch of stored events to one projector: decode (upcasting first), apply in a
//! savepoint, and when the batch fails find the event that broke it.
//!
//! The caller owns the transaction and writes the checkpoint in it; nothing here commits.

use std::sync::Arc;

use async_trait::async_trait;
use es_core::{DecodeError, EventEnvelope, RecordedEvent, Upcasters};
use sqlx::PgConnection;
use tracing::warn;

use crate::error::{EventRef, ProjectionError, ProjectorError};
use crate::projector::{validate_name, Projector, Tables};

/// What to do with an event a projection cannot decode or apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Stop the projection, naming the event; its checkpoint stays before the batch (default).
    #[default]
    Stop,
    /// Park the event in `es_dead_letters` and apply the rest. Explicit opt-in only.
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
    /// Its logical tables.
    fn tables(&self) -> &[&'static str];
    /// Creates its tables.
    async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError>;
    /// Empties its tables.
    async fn reset(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError>;
    /// Decodes and applies a batch (see the module docs).
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        upcasters: &Upcasters,
        events: Vec<RecordedEvent>,
        policy: ErrorPolicy,
    ) -> Result<BatchOutcome, ProjectionError>;
}

/// Checks a projector's names and erases its event type.
pub fn erase<P: Projector>(projector: P) -> Result<Arc<dyn DynProjector>, ProjectionError> {
    validate_name("projection", projector.name())?;
    for table in projector.tables() {
        validate_name("table", table)?;
    }
    Ok(Arc::new(Erased(projector)))
}

struct Erased<P>(P);

/// The event an envelope came from (built only when something fails: not per event).
fn envelope_ref<E>(envelope: &EventEnvelope<E>) -> EventRef {
    EventRef {
        stream: envelope.stream_id.clone(),
        stream_version: envelope.stream_version,
        position: envelope.global_position,
        event_type: envelope.event_type.clone(),
    }
}

/// The event a decode error names, and its stored schema version.
fn decode_error_ref(error: &DecodeError) -> (EventRef, u32) {
    let (stream, stream_version, position, event_type, schema_version) = match error {
        DecodeError::UnknownEventType {
            stream,
            stream_version,
            position,
            event_type,
            schema_version,
        }
        | DecodeError::NoUpcastPath {
            stream,
            stream_version,
            position,
            event_type,
            schema_version,
            ..
        }
        | DecodeError::UpcasterFailed {
            stream,
            stream_version,
            position,
            event_type,
            schema_version,
            ..
        }
        | DecodeError::MalformedPayload {
            stream,
            stream_version,
            position,
            event_type,
            schema_version,
            ..
        } => (stream, stream_version, position, event_type, schema_version),
    };
    let reference = EventRef {
        stream: stream.clone(),
        stream_version: *stream_version,
        position: *position,
        event_type: event_type.clone(),
    };
    (reference, *schema_version)
}

async fn savepoint(conn: &mut PgConnection, sql: &str) -> Result<(), ProjectionError> {
    sqlx::query(sql).execute(&mut *conn).await?;
    Ok(())
}

async fn park(
    conn: &mut PgConnection,
    projection: &str,
    tables: &Tables,
    event: &EventRef,
    schema_version: u32,
    error: &(dyn std::fmt::Display + Sync),
) -> Result<(), ProjectionError> {
    let (generation, error) = (tables.generation(), error.to_string());
    warn!(
        projection,
        stream = %event.stream,
        position = %event.position,
        event_type = %event.event_type,
        error = %error,
        "parking event in es_dead_letters"
    );
    sqlx::query(
        "INSERT INTO es_dead_letters
             (projection, generation, global_position, stream_id, stream_version, event_type,
              schema_version, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT DO NOTHING",
    )
    .bind(projection)
    .bind(generation)
    .bind(event.position.0)
    .bind(event.stream.as_str())
    .bind(i64::try_from(event.stream_version.0).unwrap_or(i64::MAX))
    .bind(&event.event_type)
    .bind(i32::try_from(schema_version).unwrap_or(i32::MAX))
    .bind(&error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl<P: Projector> DynProjector for Erased<P> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn tables(&self) -> &[&'static str] {
        self.0.tables()
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
    ) -> Result<BatchOutcome, ProjectionError> {
        let name = self.0.name();
        let mut outcome = BatchOutcome::default();
        let mut decoded = Vec::with_capacity(events.len());
        for event in events {
            if !self.0.accepts_stream(&event.stream_id) {
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
                    let (reference, schema_version) = decode_error_ref(&error);
                    park(conn, name, tables, &reference, schema_version, &error).await?;
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
            Err(_) => savepoint(conn, "ROLLBACK TO SAVEPOINT es_batch").await?,
        }
        // The batch failed: apply event by event to find the culprit (and, under the
        // dead-letter policy, to apply everything else).
        for envelope in decoded {
            let reference = envelope_ref(&envelope);
            savepoint(conn, "SAVEPOINT es_event").await?;
            let schema_version = upcasters.current_version(&envelope.event_type).unwrap_or(0);
            match self
                .0
                .apply(conn, tables, std::slice::from_ref(&envelope))
                .await
            {
                Ok(()) => {
                    savepoint(conn, "RELEASE SAVEPOINT es_event").await?;
                    outcome.applied += 1;
                }
                Err(error) => {
                    savepoint(conn, "ROLLBACK TO SAVEPOINT es_event").await?;
                    if policy == ErrorPolicy::Stop {
                        return Err(ProjectionError::Handler {
                            projection: name.to_string(),
                            event: reference,
                            source: error,
                        });
                    }
                    park(conn, name, tables, &reference, schema_version, &error).await?;
                    outcome.parked += 1;
                }
            }
        }
        Ok(outcome)
    }
}
