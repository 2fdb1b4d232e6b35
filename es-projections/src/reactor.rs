//! The [`Reactor`] trait: events in, effects outside the read database out (a mail sent, an API
//! called, a command executed on another aggregate: see [`crate::process`]).
//!
//! A worker runs a reactor like a projection (checkpointed with the gap-safe reader, leased, one
//! active process, standbys take over, each stream in order), except that its effect cannot
//! commit with the checkpoint (see [`crate::consumer`]). So:
//! - **At least once**: an event is delivered again when the process dies after the effect and
//!   before the checkpoint (at most one batch: [`ReactorOptions::batch_size`]). Make the effect
//!   exactly once with the event's id ([`EventEnvelope::event_id`]), stable across deliveries: a
//!   unique key in the table the effect writes, an `Idempotency-Key` header, a broker's message
//!   id, or a command's [`IdempotencyKey`](es_core::IdempotencyKey).
//! - **Retries**: a [`ReactionError::Transient`] is retried with a doubling backoff
//!   ([`RetryPolicy`]); a [`ReactionError::Permanent`] is not. The lease is renewed before each
//!   event and every third of its length while a reaction or a backoff runs, so a slow batch
//!   keeps it; a reaction under a lease found lost is dropped (it is delivered again).
//! - **Dead letters**: after the last attempt (or at once when permanent, or when the event
//!   cannot be decoded) the event is parked in `es_dead_letters`, never skipped; later events of
//!   its stream are parked behind it, in order. Then the reactor goes on with the other streams,
//!   or stops, as [`OnFailure`] says. An operator retries or skips letters from the CLI
//!   ([`crate::dead_letters`]).

use std::sync::Arc;

use async_trait::async_trait;
use es_core::{BoxError, DomainEvent, EventEnvelope, RecordedEvent, StreamId};

use crate::consumer::{keeping_alive, ConsumerContext, ConsumerKind, DynConsumer, RetryPolicy};
use crate::dead_letters::{self, Cause, ParkedEvent};
use crate::engine::BatchOutcome;
use crate::error::ProjectionError;
use crate::projector::validate_name;

/// Why a reaction failed.
#[derive(Debug, thiserror::Error)]
pub enum ReactionError {
    /// May succeed later (a timeout, a service down, a conflict): retried with backoff, then
    /// parked when the attempts run out.
    #[error("transient: {0}")]
    Transient(#[source] BoxError),
    /// Will fail again however often it is tried (a refused request, bad data): parked at once.
    #[error("permanent: {0}")]
    Permanent(#[source] BoxError),
}

impl ReactionError {
    /// A transient failure.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        ReactionError::Transient(error.into())
    }

    /// A permanent failure.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        ReactionError::Permanent(error.into())
    }
}

/// Handles events with effects outside the read database.
///
/// ```
/// use async_trait::async_trait;
/// use es_core::{DomainEvent, EventEnvelope};
/// use es_projections::{Reactor, ReactionError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Serialize, Deserialize)]
/// enum UserEvent { Registered { email: String } }
/// impl DomainEvent for UserEvent {
///     const EVENT_TYPES: &'static [(&'static str, u32)] = &[("Registered", 1)];
/// }
///
/// struct WelcomeMail;
///
/// #[async_trait]
/// impl Reactor for WelcomeMail {
///     type Event = UserEvent;
///     fn name(&self) -> &str { "welcome_mail" }
///
///     async fn react(&self, event: &EventEnvelope<UserEvent>, _attempt: u32) -> Result<(), ReactionError> {
///         let UserEvent::Registered { email } = &event.event;
///         // send(email, idempotency_key = event.event_id): the mail service drops a repeat.
///         let _ = (email, event.event_id);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Reactor: Send + Sync + 'static {
    /// The events it reads: events of types this enum does not define are not delivered.
    type Event: DomainEvent;

    /// A stable name: it keys the checkpoint, in the same namespace as projections (same
    /// rules: 1 to 40 lowercase letters, digits and underscores, starting with a letter).
    fn name(&self) -> &str;

    /// Whether events of this stream are for this reactor (see
    /// [`Projector::accepts_stream`](crate::Projector::accepts_stream)). Default: every stream.
    fn accepts_stream(&self, stream: &StreamId) -> bool {
        let _ = stream;
        true
    }

    /// Makes the effect of one event. `attempt` counts from 1. Called again for the same event
    /// after a failure or a crash: key the effect by `event.event_id`.
    async fn react(
        &self,
        event: &EventEnvelope<Self::Event>,
        attempt: u32,
    ) -> Result<(), ReactionError>;
}

/// What a reactor does once an event is parked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Go on with the other streams; the event's stream waits behind its dead letter (default).
    #[default]
    Continue,
    /// Stop the reactor in this process (recorded as failed, shown by `status`): the rest of the
    /// batch is parked behind the letter. It stays stopped until a worker process starts (which
    /// takes failed ones up again) or a `retry` from the CLI takes it up; then the letters the
    /// stop held (those with no failed letter before them) are delivered by themselves, and the
    /// failed one waits for the operator.
    Stop,
}

/// How a worker runs a reactor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactorOptions {
    /// Events per batch: the most delivered again after a crash.
    pub batch_size: usize,
    /// Attempts and backoff before an event is parked.
    pub retry: RetryPolicy,
    /// What to do after parking.
    pub on_failure: OnFailure,
}

impl Default for ReactorOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            retry: RetryPolicy::default(),
            on_failure: OnFailure::Continue,
        }
    }
}

/// Checks a reactor's name and erases its event type.
pub(crate) fn erase<R: Reactor>(
    reactor: R,
    options: ReactorOptions,
) -> Result<Arc<dyn DynConsumer>, ProjectionError> {
    validate_name("reactor", reactor.name())?;
    Ok(Arc::new(Erased { reactor, options }))
}

struct Erased<R> {
    reactor: R,
    options: ReactorOptions,
}

/// Why the rest of a stopped reactor's batch is parked.
const STOPPED: &str = "held: the reactor stopped on an earlier dead letter";

impl<R: Reactor> Erased<R> {
    /// Reacts to one event with retries; the parked letter when the attempts run out or the
    /// failure is permanent. `Ok(None)` also when the lease was lost (the caller checks).
    async fn react_with_retries(
        &self,
        envelope: &EventEnvelope<R::Event>,
        event: &es_core::EventLocation,
        context: &mut ConsumerContext<'_>,
    ) -> Result<Option<ParkedEvent>, ProjectionError> {
        let name = self.reactor.name();
        let policy = &self.options.retry;
        let mut attempt = 1u32;
        loop {
            // Renewed before and during the reaction: a batch of slow reactions must not let
            // the lease expire under it (a standby would take it and react to the same events).
            if !context.keep_alive.renew_if_due().await? {
                return Ok(None);
            }
            let reaction = self.reactor.react(envelope, attempt);
            let error = match keeping_alive(&mut *context.keep_alive, reaction).await? {
                None => return Ok(None),
                Some(Ok(())) => return Ok(None),
                Some(Err(error)) => error,
            };
            let last = attempt >= policy.max_attempts.max(1);
            if matches!(error, ReactionError::Permanent(_)) || last {
                tracing::warn!(reactor = name, stream = %event.stream, position = %event.position, attempt, %error, "reaction failed; parking the event");
                return Ok(Some(ParkedEvent {
                    event: event.clone(),
                    cause: Cause::Failed,
                    error: error.to_string(),
                    attempts: attempt,
                }));
            }
            let pause = policy.backoff(attempt);
            tracing::info!(reactor = name, stream = %event.stream, position = %event.position, attempt, %error, ?pause, "reaction failed; retrying");
            if keeping_alive(&mut *context.keep_alive, tokio::time::sleep(pause))
                .await?
                .is_none()
            {
                return Ok(None);
            }
            attempt += 1;
        }
    }
}

#[async_trait]
impl<R: Reactor> DynConsumer for Erased<R> {
    fn name(&self) -> &str {
        self.reactor.name()
    }

    fn kind(&self) -> ConsumerKind {
        ConsumerKind::Reactor
    }

    fn accepts_stream(&self, stream: &StreamId) -> bool {
        self.reactor.accepts_stream(stream)
    }

    fn batch_size(&self) -> Option<usize> {
        Some(self.options.batch_size.max(1))
    }

    async fn handle_batch(
        &self,
        events: Vec<RecordedEvent>,
        context: &mut ConsumerContext<'_>,
    ) -> Result<BatchOutcome, ProjectionError> {
        let mut outcome = BatchOutcome::default();
        for event in events {
            if !self.reactor.accepts_stream(&event.stream_id) {
                continue;
            }
            if context.stop.is_some() {
                context.parked.push(ParkedEvent::held(&event, STOPPED));
                outcome.parked += 1;
                continue;
            }
            if context.blocked.contains(&event.stream_id) {
                let behind = format!(
                    "held behind an open dead letter of stream {}",
                    event.stream_id
                );
                context.parked.push(ParkedEvent::held(&event, &behind));
                outcome.parked += 1;
                continue;
            }
            let location = dead_letters::location(&event);
            let parked = match context.upcasters.decode::<R::Event>(event) {
                Ok(None) => continue,
                Ok(Some(envelope)) => {
                    match self
                        .react_with_retries(&envelope, &location, context)
                        .await?
                    {
                        None if context.keep_alive.lost() => return Ok(outcome),
                        None => {
                            outcome.applied += 1;
                            continue;
                        }
                        Some(parked) => parked,
                    }
                }
                Err(error) => ParkedEvent {
                    event: error.at.clone(),
                    cause: Cause::Failed,
                    error: error.to_string(),
                    attempts: 1,
                },
            };
            context.blocked.insert(parked.event.stream.clone());
            if self.options.on_failure == OnFailure::Stop {
                context.stop = Some(format!(
                    "reactor {} stopped on a dead letter: {} ({})",
                    self.reactor.name(),
                    parked.event,
                    parked.error
                ));
            }
            context.parked.push(parked);
            outcome.parked += 1;
        }
        Ok(outcome)
    }
}
