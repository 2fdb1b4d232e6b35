//! Writing a [`Commit`]: several streams' events, their unique values and an idempotency key
//! in one transaction, on a pooled connection or inside the caller's own transaction.
//!
//! The steps, in one transaction (or a savepoint of the caller's):
//! 1. take the idempotency key ([`crate::idempotency`]): a racing execution of the same command
//!    waits here for the first one's transaction, then finds the key and returns its outcome;
//! 2. append each stream's events with the statements of a plain append ([`crate::append`]),
//!    in stream id order, so that two commits over the same streams wait for each other in
//!    one direction and never deadlock; a stream whose expected version does not hold (the
//!    check in the statement, or the unique index `(stream_id, stream_version)` against a
//!    writer that got there first) rolls everything back and is named in the conflict;
//! 3. release, then claim, the unique values ([`crate::uniques`]);
//! 4. record the (event type, schema version) pairs the store has not recorded yet
//!    ([`crate::event_types`]) and the outcome under the key.
//!
//! Any failure rolls the transaction (or savepoint) back: nothing of the commit stays, and a
//! caller's transaction is left as it was before the call.

use std::time::Duration;

use es_core::{
    Commit, Committed, CommittedStream, IdempotencyKey, StoreError, StreamAppend, StreamId,
};
use sqlx::{Acquire, PgConnection};

use crate::append::{self, Check, Columns, Failure};
use crate::error::storage;
use crate::event_types::{self, Pair};
use crate::idempotency::{self, Stored};
use crate::notify::NOTIFY_CHANNEL;
use crate::uniques;

/// Why a commit wrote nothing, found inside its transaction.
enum Refusal {
    /// The part at this index did not hold its expected version.
    Conflict(usize),
    /// An event id of the part at this index is already stored.
    DuplicateEventId(usize),
    /// The key is stored.
    Replay(Option<Stored>),
    /// A unique value is held by another stream.
    Taken(uniques::Taken),
}

/// A commit, checked, as its statements take it.
pub(crate) struct Prepared {
    parts: Vec<Part>,
    key: Option<IdempotencyKey>,
}

struct Part {
    stream: StreamId,
    check: Check,
    expected: es_core::ExpectedVersion,
    columns: Columns,
    uniques: Vec<es_core::UniqueChange>,
}

impl Prepared {
    pub(crate) fn new(commit: Commit) -> Self {
        let (streams, key) = commit.into_parts();
        let parts = streams
            .into_iter()
            .map(
                |StreamAppend {
                     stream,
                     expected,
                     events,
                     uniques,
                 }| Part {
                    stream,
                    check: Check::of(expected),
                    expected,
                    columns: Columns::new(events),
                    uniques,
                },
            )
            .collect();
        Self { parts, key }
    }

    /// One stream's events, as a plain append has them.
    pub(crate) fn single(
        stream: &StreamId,
        expected: es_core::ExpectedVersion,
        columns: Columns,
    ) -> Self {
        Self {
            parts: vec![Part {
                stream: stream.clone(),
                check: Check::of(expected),
                expected,
                columns,
                uniques: Vec::new(),
            }],
            key: None,
        }
    }

    /// Every part's events.
    pub(crate) fn columns(&self) -> impl Iterator<Item = &Columns> {
        self.parts.iter().map(|part| &part.columns)
    }

    /// Whether a conflict on part `index`, with the stream at `actual`, may be retried by the
    /// store itself (the part expected `Any`, or `StreamExists` of a stream that exists).
    pub(crate) fn retries(&self, error: &StoreError) -> bool {
        let StoreError::Conflict { stream, actual, .. } = error else {
            return false;
        };
        self.parts
            .iter()
            .find(|part| &part.stream == stream)
            .is_some_and(|part| part.check.retries_race(*actual))
    }
}

/// Writes `commit` on `conn`: in a transaction of its own when `conn` is in none, in a
/// savepoint of the caller's transaction otherwise. With `notify`, the transaction also
/// sends the workers' wake-up, which PostgreSQL delivers at commit (and drops on rollback).
pub(crate) async fn write(
    conn: &mut PgConnection,
    commit: &Prepared,
    new_types: &[Pair],
    retention: Duration,
    notify: bool,
) -> Result<Committed, StoreError> {
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| storage("starting a commit's transaction", e))?;
    let written = steps(&mut tx, commit, new_types, retention, notify).await;
    let refusal = match written {
        Ok(Ok(streams)) => {
            tx.commit()
                .await
                .map_err(|e| storage(format!("committing {}", describe(commit)), e))?;
            return Ok(Committed {
                streams,
                replayed: false,
            });
        }
        Ok(Err(refusal)) => refusal,
        Err(error) => {
            // The transaction is rolled back when dropped; say what failed.
            let _ = tx.rollback().await;
            return Err(storage(format!("writing {}", describe(commit)), error));
        }
    };
    tx.rollback()
        .await
        .map_err(|e| storage("rolling back a refused commit", e))?;
    Err(match refusal {
        Refusal::Replay(Some(Stored::Same(streams))) => {
            return Ok(Committed {
                streams,
                replayed: true,
            })
        }
        Refusal::Replay(Some(Stored::Other)) => StoreError::IdempotencyKeyReused {
            key: commit
                .key
                .as_ref()
                .map(|k| k.key().to_string())
                .unwrap_or_default(),
        },
        // Held by a committed transaction, but gone (or expired) by the time it was read:
        // pruned in between. Trying again takes it.
        Refusal::Replay(None) => StoreError::storage_message(
            "the idempotency key was pruned while this commit waited for it; retry",
            true,
        ),
        Refusal::Conflict(index) => {
            let part = &commit.parts[index];
            StoreError::Conflict {
                stream: part.stream.clone(),
                expected: part.expected,
                actual: append::stream_version(&mut *conn, &part.stream)
                    .await
                    .ok()
                    .flatten(),
            }
        }
        Refusal::DuplicateEventId(index) => StoreError::DuplicateEventId {
            event_id: append::duplicate_id(&mut *conn, &commit.parts[index].columns).await,
        },
        Refusal::Taken(taken) => StoreError::UniqueValueTaken {
            holder: StreamId::from_stored(taken.holder).map_err(|e| {
                StoreError::storage("a stored unique value's holder is invalid", false, e)
            })?,
            scope: taken.scope,
            value: taken.value,
        },
    })
}

async fn steps(
    tx: &mut PgConnection,
    commit: &Prepared,
    new_types: &[Pair],
    retention: Duration,
    notify: bool,
) -> Result<Result<Vec<CommittedStream>, Refusal>, sqlx::Error> {
    if let Some(key) = &commit.key {
        if !idempotency::take(&mut *tx, key, retention).await? {
            let stored = idempotency::read(&mut *tx, key, retention).await?;
            return Ok(Err(Refusal::Replay(stored)));
        }
    }
    let mut order: Vec<usize> = (0..commit.parts.len()).collect();
    order.sort_by(|&a, &b| commit.parts[a].stream.cmp(&commit.parts[b].stream));
    let mut streams: Vec<Option<CommittedStream>> = vec![None; commit.parts.len()];
    for index in order {
        let part = &commit.parts[index];
        match append::append(&mut *tx, &part.stream, part.check, &part.columns).await {
            Ok(Some(appended)) => {
                streams[index] = Some(CommittedStream {
                    stream: part.stream.clone(),
                    events: part.columns.event_ids.len() as u64,
                    stream_version: appended.stream_version,
                    global_position: appended.global_position,
                });
            }
            Ok(None) => return Ok(Err(Refusal::Conflict(index))),
            Err(error) => {
                return match Failure::of(error) {
                    Failure::VersionRace => Ok(Err(Refusal::Conflict(index))),
                    Failure::DuplicateEventId => Ok(Err(Refusal::DuplicateEventId(index))),
                    Failure::Other(error) => Err(error),
                }
            }
        }
    }
    let changes: Vec<_> = commit
        .parts
        .iter()
        .flat_map(|part| {
            part.uniques
                .iter()
                .map(move |change| (&part.stream, change))
        })
        .collect();
    if !changes.is_empty() {
        if let Err(taken) = uniques::apply(&mut *tx, &changes).await? {
            return Ok(Err(Refusal::Taken(taken)));
        }
    }
    if !new_types.is_empty() {
        event_types::record(&mut *tx, new_types).await?;
    }
    let streams: Vec<CommittedStream> = streams.into_iter().flatten().collect();
    if let Some(key) = &commit.key {
        idempotency::save(&mut *tx, key, &streams).await?;
    }
    if notify {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    Ok(Ok(streams))
}

fn describe(commit: &Prepared) -> String {
    let streams: Vec<&str> = commit.parts.iter().map(|p| p.stream.as_str()).collect();
    format!("a commit to {}", streams.join(", "))
}
