//! Group commit: appends of concurrent writers, each at an exact expected version, share one
//! statement and so one transaction and one commit.
//!
//! With one transaction per append, many writers are bound by commits: each is a WAL record to
//! flush, a round trip, a statement to plan and run. Queued appends are instead taken together
//! by a committer task (up to [`GroupCommit::max_appends`]) and written by one statement
//! (`sql/append_group.sql`). An idle store adds no delay: a lone append is sent at once, alone.
//! Appends gather only while earlier ones are being committed.
//!
//! On by default, and adaptive ([`GroupCommit::alone_when_idle`]): an append that finds no
//! other exact append of its store in flight is written at once by its own task, as without
//! group commit, and pays nothing for the committers (no hand-over to their task, no wait for
//! its reply, measured at about 50 µs a command on a 2-core machine). Only appends that arrive
//! while others are in flight are queued, and those are the ones a shared commit helps.
//!
//! What each writer sees is unchanged:
//! - each append is still all or nothing. The statement checks every append's expected version
//!   against its snapshot and inserts an append's rows only if its stream is at that version,
//!   so an append that lost a race (a stale cached version, say) writes nothing and is
//!   reported as a conflict, while the others commit;
//! - when the statement fails in the database, nothing was written: a writer outside the group
//!   (a plain append, another committer, another process) committed the same stream's next
//!   version after the statement's snapshot (the unique index
//!   (stream_id, stream_version) refuses the row), or one append is bad (a duplicate event id).
//!   The committer then appends each of the group on its own, as without group commit, so each
//!   writer gets its own answer and one bad append fails no other;
//! - two appends to one stream never share a statement: the later one waits for the next;
//! - rows are inserted in stream order, the same everywhere, so groups racing on the same
//!   streams never wait for each other in a cycle;
//! - any other failure (a lost connection, say) leaves the outcome unknown and is reported to
//!   every writer of the group, as it would have been to each alone;
//! - a writer that stops waiting (its future dropped) before its group is formed is left out.
//!
//! The group statement is sent unprepared (an unnamed statement), so PostgreSQL plans it for
//! each execution against the table as it is then. A named prepared statement, as sqlx keeps
//! one per pooled connection, may after five executions switch to a generic plan it then reuses
//! (PostgreSQL documentation, `PREPARE`, "Notes", and the `plan_cache_mode` setting); a generic
//! plan made while `es_events` was young scanned the whole table for every group as it grew,
//! until an ANALYZE invalidated it. Its check is a correlated scalar subquery, which PostgreSQL
//! never turns into a hashed subplan (`sql/append_group.sql`). The test
//! `tests/group_commit_plan.rs` counts the rows grouped appends read by sequential scans on a
//! table grown since its last ANALYZE.
//!
//! Appends with [`ExpectedVersion::Any`](es_core::ExpectedVersion::Any) or `StreamExists` are
//! not grouped: their statement reads the stream's version itself.

use std::collections::HashMap;
use std::sync::Arc;

use es_core::{AppendResult, GlobalPosition, StreamId, StreamVersion};
use futures::StreamExt;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::debug;

use crate::append::{append_exact, Columns};
use crate::error::{is_stream_version_conflict, is_transient};

const APPEND_GROUP: &str = include_str!("sql/append_group.sql");

/// How a store groups appends (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommit {
    /// The most appends one statement takes.
    pub max_appends: usize,
    /// Groups committed at the same time, each on its own pooled connection: while one commits,
    /// the next gathers.
    pub committers: usize,
    /// An append that finds no other exact append of its store in flight skips the committers
    /// and is written at once by its own task (the lone writer pays nothing for grouping).
    /// `false`: every exact append goes through the committers.
    pub alone_when_idle: bool,
}

impl Default for GroupCommit {
    fn default() -> Self {
        Self {
            max_appends: 64,
            committers: 2,
            alone_when_idle: true,
        }
    }
}

/// What a grouped append came to.
pub(crate) enum Reply {
    /// The append's own result (`Ok(None)` when its expected version did not hold), and its
    /// events back, for the caller to say which one was a duplicate.
    Done(Result<Option<AppendResult>, sqlx::Error>, Columns),
    /// The group's statement failed for everyone, for a reason other than a version race.
    GroupFailed {
        /// The error, as text (every writer of the group gets a copy).
        message: String,
        /// Whether retrying may succeed.
        transient: bool,
    },
}

struct Request {
    stream: StreamId,
    expected: i64,
    columns: Columns,
    reply: oneshot::Sender<Reply>,
}

/// The queue to the committer tasks.
#[derive(Debug)]
pub(crate) struct GroupCommitter {
    requests: mpsc::UnboundedSender<Request>,
}

impl GroupCommitter {
    /// Starts the committer tasks on the current tokio runtime, if there is one.
    pub(crate) fn start(pool: PgPool, settings: GroupCommit) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (requests, queue) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..settings.committers.max(1) {
            runtime.spawn(commit_groups(
                pool.clone(),
                queue.clone(),
                settings.max_appends.max(1),
            ));
        }
        Some(Self { requests })
    }

    /// Queues an append to `stream` at exact version `expected` (0: no events) and waits for
    /// its outcome. Gives the events back when the committers are gone (their runtime shut
    /// down) before taking them: the caller then appends them itself.
    pub(crate) async fn append(
        &self,
        stream: &StreamId,
        expected: i64,
        columns: Columns,
    ) -> Result<Reply, Columns> {
        let (reply, outcome) = oneshot::channel();
        let request = Request {
            stream: stream.clone(),
            expected,
            columns,
            reply,
        };
        if let Err(unsent) = self.requests.send(request) {
            return Err(unsent.0.columns);
        }
        // Taken, then dropped unanswered: the outcome is unknown.
        Ok(outcome.await.unwrap_or_else(|_| stopped()))
    }
}

fn stopped() -> Reply {
    Reply::GroupFailed {
        message: "the group committer stopped before answering (its runtime shut down); \
                  the append may or may not have been committed"
            .into(),
        transient: false,
    }
}

/// A committer: takes what is queued (waiting for at least one append), commits it, again.
async fn commit_groups(
    pool: PgPool,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Request>>>,
    max_appends: usize,
) {
    loop {
        let group = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < max_appends {
                match queue.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            group
        };
        for round in rounds(group) {
            commit(&pool, round).await;
        }
    }
}

/// Splits a group so that no round has two appends to one stream; a stream's appends keep
/// their order across rounds.
fn rounds(group: Vec<Request>) -> Vec<Vec<Request>> {
    let mut rounds: Vec<Vec<Request>> = Vec::new();
    let mut seen: HashMap<StreamId, usize> = HashMap::new();
    for request in group {
        let round = seen.entry(request.stream.clone()).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(request);
        *round += 1;
    }
    rounds
}

/// Commits one round (distinct streams) and answers every writer in it.
async fn commit(pool: &PgPool, mut round: Vec<Request>) {
    // A writer that gave up waiting (its future was dropped) before its group formed is not
    // written: as with a plain append cancelled before it was sent.
    round.retain(|request| !request.reply.is_closed());
    if round.is_empty() {
        return;
    }
    // Rows are inserted in stream order, the same in every group and every process: two groups
    // racing on the same streams wait for each other in one direction, never in a cycle (a
    // deadlock would fail both).
    round.sort_by(|a, b| a.stream.as_str().cmp(b.stream.as_str()));
    if round.len() == 1 {
        if let Some(request) = round.pop() {
            one_by_one(pool, vec![request]).await;
        }
        return;
    }
    let events: usize = round.iter().map(|r| r.columns.event_ids.len()).sum();
    let mut event_ids = Vec::with_capacity(events);
    let mut streams = Vec::with_capacity(events);
    let mut expected = Vec::with_capacity(events);
    let mut numbers = Vec::with_capacity(events);
    let mut event_types = Vec::with_capacity(events);
    let mut schema_versions = Vec::with_capacity(events);
    let mut payloads = Vec::with_capacity(events);
    let mut metadata = Vec::with_capacity(events);
    for request in &round {
        let columns = &request.columns;
        for i in 0..columns.event_ids.len() {
            event_ids.push(columns.event_ids[i]);
            streams.push(request.stream.as_str());
            expected.push(request.expected);
            numbers.push(i as i64 + 1);
            event_types.push(columns.event_types[i].as_str());
            schema_versions.push(columns.schema_versions[i]);
            payloads.push(&columns.payloads[i]);
            metadata.push(&columns.metadata[i]);
        }
    }
    // Not a prepared statement the connection keeps: PostgreSQL plans an unnamed statement
    // for each execution with the table as it is then, instead of reusing a generic plan made
    // while es_events was young (see sql/append_group.sql). The planning is shared by every
    // append of the group.
    let inserted = sqlx::query(APPEND_GROUP)
        .persistent(false)
        .bind(&event_ids)
        .bind(&streams)
        .bind(&expected)
        .bind(&numbers)
        .bind(&event_types)
        .bind(&schema_versions)
        .bind(&payloads)
        .bind(&metadata)
        .fetch_all(pool)
        .await;
    match inserted {
        Ok(rows) => {
            debug!(appends = round.len(), events, "group committed");
            let mut last: HashMap<String, (i64, i64)> = HashMap::with_capacity(round.len());
            for row in &rows {
                let decoded: Result<(String, i64, i64), sqlx::Error> =
                    (|| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))();
                let Ok((stream, version, position)) = decoded else {
                    // Committed, but the answer cannot be read: say so rather than guess.
                    return answer_all(
                        round,
                        "the group committed but its result could not be decoded".into(),
                        false,
                    );
                };
                let entry = last.entry(stream).or_insert((version, position));
                *entry = (entry.0.max(version), entry.1.max(position));
            }
            for request in round {
                let result = last
                    .get(request.stream.as_str())
                    .map(|&(version, position)| AppendResult {
                        stream_version: StreamVersion(version.max(0) as u64),
                        global_position: GlobalPosition(position),
                    });
                let _ = request.reply.send(Reply::Done(Ok(result), request.columns));
            }
        }
        // The statement failed in the database, so nothing was written: a writer outside the
        // group won a version race after the snapshot, or one append is bad (a duplicate event
        // id). Each writer gets its own answer, and the others are not failed by one.
        Err(error @ sqlx::Error::Database(_)) => {
            debug!(
                appends = round.len(),
                version_race = is_stream_version_conflict(&error),
                %error,
                "a group's statement failed; appending one by one"
            );
            one_by_one(pool, round).await;
        }
        // Anything else (a lost connection, say) may have happened at commit: the outcome is
        // unknown, and every writer of the group is told so.
        Err(error) => {
            let transient = is_transient(&error);
            answer_all(round, error.to_string(), transient);
        }
    }
}

/// Appends each request on its own, a few at a time (they are on distinct streams).
async fn one_by_one(pool: &PgPool, round: Vec<Request>) {
    futures::stream::iter(round)
        .for_each_concurrent(ONE_BY_ONE_IN_FLIGHT, |request| async move {
            let result =
                append_exact(pool, &request.stream, request.expected, &request.columns).await;
            let _ = request.reply.send(Reply::Done(result, request.columns));
        })
        .await;
}

/// How many appends of a failed group go at once: enough to drain it quickly, few enough to
/// leave the pool to everyone else.
const ONE_BY_ONE_IN_FLIGHT: usize = 8;

fn answer_all(round: Vec<Request>, message: String, transient: bool) {
    for request in round {
        let _ = request.reply.send(Reply::GroupFailed {
            message: message.clone(),
            transient,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(stream: &str, expected: i64) -> Request {
        Request {
            stream: StreamId::new(stream).unwrap_or_else(|e| panic!("{e}")),
            expected,
            columns: Columns::new(Vec::new()),
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_stream_appears_at_most_once_per_round_in_order() {
        let group = vec![
            request("a", 1),
            request("b", 1),
            request("a", 2),
            request("a", 3),
            request("c", 0),
            request("b", 2),
        ];
        let rounds: Vec<Vec<(String, i64)>> = rounds(group)
            .into_iter()
            .map(|round| {
                round
                    .into_iter()
                    .map(|r| (r.stream.as_str().to_string(), r.expected))
                    .collect()
            })
            .collect();
        let named = |pairs: &[(&str, i64)]| -> Vec<(String, i64)> {
            pairs.iter().map(|(s, v)| (s.to_string(), *v)).collect()
        };
        assert_eq!(
            rounds,
            vec![
                named(&[("a", 1), ("b", 1), ("c", 0)]),
                named(&[("a", 2), ("b", 2)]),
                named(&[("a", 3)]),
            ]
        );
    }
}
