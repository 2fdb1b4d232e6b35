//! Reading the global log without ever skipping an event, even when transactions commit in a
//! different order than their positions.
//!
//! **Guarantee.** A reader that starts from a [`LogCursor`] and follows the cursors returned by
//! [`read_batch`] receives every committed event exactly once, never an uncommitted or
//! rolled-back one, and each stream's events in version order. It takes no lock, never waits for
//! a timeout to pass over a gap, and events committed after a long-running transaction are
//! delivered at once, without waiting for it to end.
//!
//! **How.** Positions come from an identity column and are taken before commit, so a higher
//! position can become visible before a lower one. The cursor keeps a *watermark* (the highest
//! position read) and the *holes* below it: positions that were not visible when the watermark
//! passed them. Every batch asks again for rows in the holes, in the same statement and snapshot
//! as the new rows, and delivers those that committed since. Each hole carries a *bound*: a
//! transaction id assigned *after* the snapshot in which the hole was found (the reader's own,
//! obtained right after that read, `sql/hole_bound.sql`). A hole is forgotten only when a later
//! batch's snapshot has `xmin > bound`.
//!
//! **Why that loses nothing.** Say position `p` is a hole first seen in snapshot `S`, because a
//! higher position `q` was visible in `S`, and let `T` be the transaction that took `p`.
//! 1. `p` was taken before `q`: the identity's sequence hands out values in increasing order
//!    (`nextval_internal` in `sequence.c`, under the sequence's buffer lock; `CACHE 1`, so no
//!    backend holds a private range of values).
//! 2. `q` was taken before `S`: `q` is visible in `S`, so its transaction committed before `S`.
//! 3. `T` had its transaction id before it took `p`. *Premise*, held by the schema: `es_events`
//!    declares `transaction_id DEFAULT pg_current_xact_id()` before `global_position`, and
//!    PostgreSQL evaluates an INSERT's column defaults in attribute order (`rewriteTargetListIU`
//!    in `rewriteHandler.c` and `expand_insert_targetlist` in `preptlist.c` build the target
//!    list in attribute order; `ExecBuildProjectionInfo` in `execExpr.c` evaluates it in list
//!    order). `pg_current_xact_id()` returns, assigning it if needed, the *top-level* id
//!    (`GetTopFullTransactionId`), also inside a savepoint. A test checks the column order.
//! 4. The bound was assigned after `S`; ids are handed out in increasing order under
//!    `XidGenLock` (`GetNewTransactionId` in `varsup.c`). By 1–3, `T`'s id was assigned before
//!    `S`, so `T < bound`.
//! 5. In a later snapshot `S'`, `xmin` is the oldest id still running (`GetSnapshotData` in
//!    `procarray.c`: the minimum over the ids in the proc array of the *whole cluster*, prepared
//!    transactions included, or `xmax` when none runs). If `xmin > bound > T`, then `T` was not
//!    running at `S'`: it had committed (and is visible in `S'`: a transaction is marked
//!    committed in the commit log before it leaves the proc array, `RecordTransactionCommit`
//!    then `ProcArrayEndTransaction`) or it had aborted. The same statement asked for every
//!    visible row in the hole, so a committed row at `p` is delivered in that batch; a row still
//!    invisible was rolled back and never will be visible. Forgetting the hole loses nothing.
//!
//! **The bound is not the snapshot's `xmax`.** PostgreSQL sets `xmax` to `latestCompletedXid +
//! 1`, not to the next id to be assigned: a transaction still running can hold an id at or above
//! `xmax`, is then absent from `xip`, and does not lower `xmin`. Three sessions lose an event
//! with that bound (A inserts, B inserts, A inserts again and commits, the reader reads twice,
//! B commits): `es-postgres/tests/log_reader_interleavings.rs` builds that case and explores every
//! interleaving of a few writers and the reader.
//!
//! **The cases the proof has to survive.**
//! - *Savepoints.* A row written in a subtransaction carries a subtransaction id, but the
//!   subtransaction's parent id is assigned first (`AssignTransactionId` in `xact.c`), the row's
//!   `transaction_id` is the top-level id, and `xmin` counts top-level ids: a hole owned by a
//!   running subtransaction is held by its top-level transaction. A row rolled back to a
//!   savepoint stays invisible and its hole is forgotten once the top-level transaction ends.
//! - *Prepared transactions* (two-phase commit) stay in the proc array until `COMMIT PREPARED` or
//!   `ROLLBACK PREPARED`, across restarts: their holes are held as long as they are (a forgotten
//!   prepared transaction holds holes, never events of others; `status` shows it).
//! - *A writer that took its id long before its append* is running all that time: its id is
//!   older than the hole's bound and holds `xmin` below it.
//! - *A reader whose transaction already holds an id* (it wrote, or locked a row, before
//!   reading) cannot obtain a newer one: its holes get no bound yet (`bound: None`) and are kept;
//!   the next read in a transaction without an id bounds them (any id assigned later is a sound
//!   bound too). `read_batch` checks this itself, in the read's own statement
//!   (`pg_current_xact_id_if_assigned()`).
//! - *Positions burned* by a failed insert or a rolled-back transaction are holes that never fill:
//!   forgotten once `xmin` passes their bound.
//! - The reader must run on a primary: a standby cannot assign transaction ids.
//! - Rows must take their position and transaction id from the column defaults, as every append
//!   of `PgEventStore` does. An INSERT that supplies `transaction_id`, writes `global_position`
//!   itself (`OVERRIDING SYSTEM VALUE`, `COPY` with positions), or a logical-replication
//!   subscriber applying another server's rows, breaks the premise: the reader of such a copy
//!   can skip events.
//!
//! **Per-stream order.** A stream's next event cannot commit before its previous one: the writer
//! must see the previous version to append after it, and the unique index on
//! `(stream_id, stream_version)` makes a writer that expected an older version wait and fail. So
//! a stream's later event has a later position, and a batch delivers events found in holes (older
//! positions) before new ones. Rows in holes are read `limit` at a time too; a batch that had to
//! leave some behind delivers no new events and forgets no hole.
//!
//! **Cost.** No writer waits and readers take no lock. A batch that finds new holes runs one more
//! statement (the bound) and gives the reader's transaction an id (a worker's transaction gets
//! one anyway when it writes its checkpoint). A long-running transaction anywhere in the cluster
//! does not hold later events back; it keeps the holes found while it runs in the cursor until it
//! ends, and their positions are asked for again in every batch.

use es_core::{GlobalPosition, RecordedEvent, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};

use crate::error::storage;
use crate::row::recorded_event_at;

const READ_LOG: &str = include_str!("sql/read_log.sql");
const HOLE_BOUND: &str = include_str!("sql/hole_bound.sql");
const LOG_HEAD: &str = include_str!("sql/log_head.sql");
const READ_AT: &str = include_str!("sql/read_at.sql");
const STREAMS_AFTER: &str = include_str!("sql/streams_after.sql");

/// The head of the log: the highest position of an event visible now (0 for an empty log).
/// Events may still commit below it (see the module docs): it is a progress mark, not a cursor.
pub async fn log_head<'c>(conn: impl sqlx::PgExecutor<'c>) -> Result<GlobalPosition, StoreError> {
    let head: i64 = sqlx::query_scalar(LOG_HEAD)
        .fetch_one(conn)
        .await
        .map_err(|e| storage("reading the head of the log", e))?;
    Ok(GlobalPosition(head))
}

/// The streams of the next `limit` committed events after `after`, each with how many of them
/// it has (unordered; ids as stored): how far behind a consumer that reads only some streams is, for `status`.
/// Reads at most `limit` index entries and no payload.
pub async fn streams_after<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    after: GlobalPosition,
    limit: u32,
) -> Result<Vec<(String, u64)>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(STREAMS_AFTER)
        .bind(after.0)
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await
        .map_err(|e| storage("counting the events after a position", e))?;
    Ok(rows
        .into_iter()
        .map(|(id, n)| (id, u64::try_from(n).unwrap_or(0)))
        .collect())
}

/// The committed events at `positions`, in position order (positions with no event are left
/// out): a dead letter read again for its retry.
pub async fn read_at<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    positions: &[GlobalPosition],
) -> Result<Vec<RecordedEvent>, StoreError> {
    let positions: Vec<i64> = positions.iter().map(|p| p.0).collect();
    let rows = sqlx::query(READ_AT)
        .bind(&positions)
        .fetch_all(conn)
        .await
        .map_err(|e| storage("reading events by position", e))?;
    rows.iter().map(crate::row::recorded_event).collect()
}

/// A range of positions below the watermark that was not visible when it was passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hole {
    /// First position of the range.
    pub start: i64,
    /// Last position of the range (inclusive).
    pub end: i64,
    /// A transaction id assigned after the snapshot in which the hole was found, so greater than
    /// the id of any transaction that could fill it. Once a snapshot's `xmin` is above it, every
    /// such transaction has ended. `None` until the reader could obtain such an id (see the
    /// module docs): such a hole is never forgotten.
    pub bound: Option<i64>,
}

/// Where a reader stands in the global log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor {
    /// Every position at or below this has been read, except the holes.
    pub watermark: GlobalPosition,
    /// Positions below the watermark still awaiting their transaction's end.
    pub holes: Vec<Hole>,
}

impl LogCursor {
    /// Whether the event at `position` has been read (for read-your-writes).
    pub fn covers(&self, position: GlobalPosition) -> bool {
        position <= self.watermark
            && !self
                .holes
                .iter()
                .any(|h| (h.start..=h.end).contains(&position.0))
    }

    /// How many positions the holes span.
    pub fn hole_positions(&self) -> i64 {
        self.holes.iter().map(|h| h.end - h.start + 1).sum()
    }
}

/// The transaction horizon of a batch's snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Horizon {
    /// The oldest transaction id still running when the snapshot was taken (cluster-wide).
    pub xmin: i64,
    /// One past the latest *completed* transaction id when the snapshot was taken. Not the next
    /// id to be assigned: a running transaction may hold an id at or above it.
    pub xmax: i64,
}

/// One batch: the events to apply, in delivery order, and the cursor after them.
#[derive(Clone, Debug)]
pub struct LogBatch {
    /// Events that filled holes (older positions), then new events, each group in position
    /// order.
    pub events: Vec<RecordedEvent>,
    /// The cursor to store with the batch's effects.
    pub next: LogCursor,
    /// The snapshot horizon the batch was read at.
    pub horizon: Horizon,
}

impl LogBatch {
    /// Whether storing this batch would change nothing: no events, same cursor.
    pub fn is_idle(&self, from: &LogCursor) -> bool {
        self.events.is_empty() && self.next == *from
    }
}

/// Reads the next batch after `cursor`: up to `limit` new events above the watermark, plus up to
/// `limit` events that have become visible in holes (so at most twice `limit` in all).
///
/// Run it on the connection or transaction that will store the effects and the new cursor, or on
/// any other: the log is append-only, so where a batch is read does not matter. Read before
/// writing in the transaction: a transaction that already holds an id can still read, but the
/// holes it finds are settled only by a later read (see the module docs). A batch that finds new
/// holes gives the transaction an id.
pub async fn read_batch(
    conn: &mut PgConnection,
    cursor: &LogCursor,
    limit: usize,
) -> Result<LogBatch, StoreError> {
    let starts: Vec<i64> = cursor.holes.iter().map(|h| h.start).collect();
    let ends: Vec<i64> = cursor.holes.iter().map(|h| h.end).collect();
    let rows = sqlx::query(READ_LOG)
        .bind(cursor.watermark.0)
        .bind(i64::try_from(limit.max(1)).unwrap_or(i64::MAX))
        .bind(&starts)
        .bind(&ends)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| storage("reading the global log", e))?;
    let get = |e| storage("decoding the log horizon", e);
    let mut horizon = Horizon { xmin: 0, xmax: 0 };
    let mut reader_has_xid = true;
    let mut filled = Vec::new();
    let mut fresh = Vec::new();
    for row in &rows {
        horizon = Horizon {
            xmin: row.try_get(0).map_err(get)?,
            xmax: row.try_get(1).map_err(get)?,
        };
        reader_has_xid = row.try_get(2).map_err(get)?;
        // A NULL position is the horizon row of an empty batch (the LEFT JOIN found nothing).
        let position: Option<i64> = row.try_get(3).map_err(get)?;
        let Some(position) = position else { continue };
        let event = recorded_event_at(row, 3)?;
        if position > cursor.watermark.0 {
            fresh.push(event);
        } else {
            filled.push(event);
        }
    }
    filled.sort_by_key(|e| e.global_position);
    fresh.sort_by_key(|e| e.global_position);
    // The holes' rows were cut at `limit`: some visible ones are perhaps left for the next
    // batch. Then no hole is forgotten in this one, and no new event is delivered either: a
    // stream's next event must not overtake its previous one left behind in a hole.
    let settle = filled.len() < limit.max(1);
    if !settle {
        fresh.clear();
    }
    let mut next = advance(cursor, &filled, &fresh, horizon, settle);
    if !reader_has_xid && next.holes.iter().any(|h| h.bound.is_none()) {
        let bound: i64 = sqlx::query_scalar(HOLE_BOUND)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| storage("bounding the log's holes", e))?;
        bound_holes(&mut next, bound);
    }
    filled.extend(fresh);
    Ok(LogBatch {
        events: filled,
        next,
        horizon,
    })
}

/// Gives every unbounded hole the bound `xid`, an id assigned after the snapshots in which those
/// holes were found.
fn bound_holes(cursor: &mut LogCursor, xid: i64) {
    for hole in cursor.holes.iter_mut().filter(|h| h.bound.is_none()) {
        hole.bound = Some(xid);
    }
}

/// The cursor after delivering `filled` (events found in holes) and `fresh` (events above the
/// watermark, in position order), read at `horizon`. New holes have no bound yet. Holes are
/// forgotten only when `settle` (every visible row in the holes was delivered).
fn advance(
    cursor: &LogCursor,
    filled: &[RecordedEvent],
    fresh: &[RecordedEvent],
    horizon: Horizon,
    settle: bool,
) -> LogCursor {
    // Remove the filled positions from the holes, splitting ranges as needed.
    let mut holes: Vec<Hole> = Vec::with_capacity(cursor.holes.len());
    for hole in &cursor.holes {
        let mut start = hole.start;
        for event in filled
            .iter()
            .map(|e| e.global_position.0)
            .filter(|p| (hole.start..=hole.end).contains(p))
        {
            if event > start {
                holes.push(Hole {
                    start,
                    end: event - 1,
                    bound: hole.bound,
                });
            }
            start = event + 1;
        }
        if start <= hole.end {
            holes.push(Hole {
                start,
                end: hole.end,
                bound: hole.bound,
            });
        }
    }
    // Forget holes whose every possible writer had ended before this snapshot: a row still
    // invisible there was rolled back (step 5 of the module docs).
    if settle {
        holes.retain(|h| h.bound.is_none_or(|bound| horizon.xmin <= bound));
    }
    // New holes: the gaps between the old watermark and the fresh events.
    let mut watermark = cursor.watermark.0;
    for event in fresh {
        let position = event.global_position.0;
        if position > watermark + 1 {
            holes.push(Hole {
                start: watermark + 1,
                end: position - 1,
                bound: None,
            });
        }
        watermark = position;
    }
    LogCursor {
        watermark: GlobalPosition(watermark),
        holes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use es_core::{Metadata, StreamId, StreamVersion};

    fn at(position: i64) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::nil(),
            stream_id: StreamId::new("s").unwrap(),
            stream_version: StreamVersion(1),
            global_position: GlobalPosition(position),
            event_type: "T".into(),
            schema_version: 1,
            payload: es_core::Payload::default(),
            metadata: Metadata::default(),
            recorded_at: chrono::Utc::now(),
        }
    }

    fn hole(start: i64, end: i64, bound: Option<i64>) -> Hole {
        Hole { start, end, bound }
    }

    #[test]
    fn gaps_become_holes_and_fill_later() {
        let h = Horizon { xmin: 10, xmax: 20 };
        let mut c = advance(
            &LogCursor::default(),
            &[],
            &[at(1), at(4), at(5), at(9)],
            h,
            true,
        );
        assert_eq!(c.watermark, GlobalPosition(9));
        assert_eq!(c.holes, vec![hole(2, 3, None), hole(6, 8, None)]);
        assert!(c.covers(GlobalPosition(4)) && !c.covers(GlobalPosition(7)));
        bound_holes(&mut c, 21);
        // 7 commits; 2..3 and 6, 8 still pending while xmin <= 21.
        let c2 = advance(&c, &[at(7)], &[], Horizon { xmin: 21, xmax: 25 }, true);
        assert_eq!(
            c2.holes,
            vec![
                hole(2, 3, Some(21)),
                hole(6, 6, Some(21)),
                hole(8, 8, Some(21))
            ]
        );
        // Every transaction that could own them has ended: the holes are forgotten.
        let c3 = advance(&c2, &[], &[at(10)], Horizon { xmin: 22, xmax: 30 }, true);
        assert_eq!(c3.holes, vec![]);
        assert_eq!(c3.watermark, GlobalPosition(10));
    }

    #[test]
    fn unbounded_holes_are_never_forgotten() {
        let c = advance(
            &LogCursor::default(),
            &[],
            &[at(3)],
            Horizon { xmin: 5, xmax: 5 },
            true,
        );
        let later = Horizon {
            xmin: i64::MAX,
            xmax: i64::MAX,
        };
        assert_eq!(
            advance(&c, &[], &[], later, true).holes,
            vec![hole(1, 2, None)]
        );
    }

    #[test]
    fn holes_cut_at_the_limit_are_not_forgotten() {
        let c = LogCursor {
            watermark: GlobalPosition(9),
            holes: vec![hole(2, 5, Some(7))],
        };
        let later = Horizon { xmin: 8, xmax: 9 };
        // 2 and 3 delivered, 4 and 5 perhaps visible but beyond the limit: kept.
        let cut = advance(&c, &[at(2), at(3)], &[], later, false);
        assert_eq!(cut.holes, vec![hole(4, 5, Some(7))]);
        assert_eq!(advance(&cut, &[], &[], later, true).holes, vec![]);
    }

    #[test]
    fn only_unbounded_holes_take_a_new_bound() {
        let mut c = LogCursor {
            watermark: GlobalPosition(9),
            holes: vec![hole(2, 2, Some(7)), hole(5, 6, None)],
        };
        bound_holes(&mut c, 40);
        assert_eq!(c.holes, vec![hole(2, 2, Some(7)), hole(5, 6, Some(40))]);
    }

    #[test]
    fn a_cursor_in_the_old_format_is_refused() {
        let old = serde_json::json!({"start": 2, "end": 3, "xmax": 9});
        assert!(serde_json::from_value::<Hole>(old).is_err());
    }

    #[test]
    fn cursor_round_trips_through_json() {
        let c = LogCursor {
            watermark: GlobalPosition(5),
            holes: vec![hole(2, 3, Some(9)), hole(5, 5, None)],
        };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(serde_json::from_value::<LogCursor>(json).unwrap(), c);
    }
}
