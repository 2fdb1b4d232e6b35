//! Reading the global log without ever skipping an event, even when transactions commit in a
//! different order than their positions.
//!
//! Guarantee: a reader that starts from a [`LogCursor`] and follows the cursors returned by
//! [`read_batch`] receives every committed event exactly once, never an uncommitted or
//! rolled-back one, and each stream's events in version order. It takes no lock and never waits
//! for a timeout to pass over a gap.
//!
//! How: positions come from an identity column and are taken before commit, so a higher position
//! can become visible before a lower one. The cursor keeps a watermark (the highest position
//! read) and the *holes* below it: positions not visible when the watermark passed them. Each
//! hole remembers the snapshot's `xmax` at the time it was found. Every later batch asks again
//! for rows in the holes (delivering those that committed since), and forgets a hole only when a
//! later snapshot's `xmin` has reached that `xmax`: then every transaction that could have taken
//! the position has ended, so a row still invisible was rolled back (or the position was burned).
//! Premise: a writer's transaction id is assigned before its rows take positions (`es_events`
//! declares `transaction_id DEFAULT pg_current_xact_id()` before `global_position`).
//!
//! Cost: a long-running transaction elsewhere does not hold later events back; it only keeps
//! its hole (and those of transactions started after it that have not yet been pruned) in the
//! cursor until it ends. Per-stream order holds because a stream's next event cannot commit
//! before its previous one (the unique index on (stream_id, stream_version) makes it wait).

use es_core::{GlobalPosition, RecordedEvent, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};

use crate::error::storage;
use crate::row::recorded_event_at;

const READ_LOG: &str = include_str!("sql/read_log.sql");

/// A range of positions below the watermark that was not visible when it was passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hole {
    /// First position of the range.
    pub start: i64,
    /// Last position of the range (inclusive).
    pub end: i64,
    /// The `xmax` of the snapshot in which the hole was found: once a snapshot's `xmin` reaches
    /// it, no transaction that could fill the hole is still running.
    pub xmax: i64,
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
    /// The oldest transaction id still running when the snapshot was taken.
    pub xmin: i64,
    /// The first transaction id not yet assigned when the snapshot was taken.
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

/// Reads the next batch after `cursor`: up to `limit` new events above the watermark, plus every
/// event that has become visible in a hole. Run it on the connection (or transaction) that will
/// store the effects and the new cursor.
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
    let mut filled = Vec::new();
    let mut fresh = Vec::new();
    for row in &rows {
        horizon = Horizon {
            xmin: row.try_get(0).map_err(get)?,
            xmax: row.try_get(1).map_err(get)?,
        };
        // A NULL position is the horizon row of an empty batch (the LEFT JOIN found nothing).
        let position: Option<i64> = row.try_get(2).map_err(get)?;
        let Some(position) = position else { continue };
        let event = recorded_event_at(row, 2)?;
        if position > cursor.watermark.0 {
            fresh.push(event);
        } else {
            filled.push(event);
        }
    }
    filled.sort_by_key(|e| e.global_position);
    fresh.sort_by_key(|e| e.global_position);
    let next = advance(cursor, &filled, &fresh, horizon);
    filled.extend(fresh);
    Ok(LogBatch {
        events: filled,
        next,
        horizon,
    })
}

/// The cursor after delivering `filled` (events found in holes) and `fresh` (events above the
/// watermark, in position order), read at `horizon`.
fn advance(
    cursor: &LogCursor,
    filled: &[RecordedEvent],
    fresh: &[RecordedEvent],
    horizon: Horizon,
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
                    xmax: hole.xmax,
                });
            }
            start = event + 1;
        }
        if start <= hole.end {
            holes.push(Hole {
                start,
                end: hole.end,
                xmax: hole.xmax,
            });
        }
    }
    // Forget holes whose every possible writer has ended: invisible now means never.
    holes.retain(|h| horizon.xmin < h.xmax);
    // New holes: the gaps between the old watermark and the fresh events.
    let mut watermark = cursor.watermark.0;
    for event in fresh {
        let position = event.global_position.0;
        if position > watermark + 1 {
            holes.push(Hole {
                start: watermark + 1,
                end: position - 1,
                xmax: horizon.xmax,
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

    #[test]
    fn gaps_become_holes_and_fill_later() {
        let h = Horizon { xmin: 10, xmax: 20 };
        let c = advance(&LogCursor::default(), &[], &[at(1), at(4), at(5), at(9)], h);
        assert_eq!(c.watermark, GlobalPosition(9));
        assert_eq!(
            c.holes,
            vec![
                Hole {
                    start: 2,
                    end: 3,
                    xmax: 20
                },
                Hole {
                    start: 6,
                    end: 8,
                    xmax: 20
                }
            ]
        );
        assert!(c.covers(GlobalPosition(4)) && !c.covers(GlobalPosition(7)));
        // 7 commits; 2..3 and 6, 8 still pending while xmin < 20.
        let c2 = advance(&c, &[at(7)], &[], Horizon { xmin: 15, xmax: 25 });
        assert_eq!(
            c2.holes,
            vec![
                Hole {
                    start: 2,
                    end: 3,
                    xmax: 20
                },
                Hole {
                    start: 6,
                    end: 6,
                    xmax: 20
                },
                Hole {
                    start: 8,
                    end: 8,
                    xmax: 20
                }
            ]
        );
        // Every transaction that could own them has ended: the holes are forgotten.
        let c3 = advance(&c2, &[], &[at(10)], Horizon { xmin: 20, xmax: 30 });
        assert_eq!(c3.holes, vec![]);
        assert_eq!(c3.watermark, GlobalPosition(10));
    }

    #[test]
    fn cursor_round_trips_through_json() {
        let c = LogCursor {
            watermark: GlobalPosition(5),
            holes: vec![Hole {
                start: 2,
                end: 3,
                xmax: 9,
            }],
        };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(serde_json::from_value::<LogCursor>(json).unwrap(), c);
    }
}
