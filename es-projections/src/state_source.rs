//! The read model as snapshot, the store as truth: [`ReadModelSource`] gives a repository an
//! aggregate's state from a projection's row, and the repository folds only the events the row
//! has not caught up with.
//!
//! A command on a long stream then costs one indexed read of the row plus the few events after
//! its version, instead of the whole stream; a stale row costs those extra events and nothing
//! else, because the events are the truth and the row only a starting point. The same load is
//! the strongly consistent read: the projection's row brought up to the stream's head, for a
//! query that must see its own write without waiting for the worker.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use es_core::{Aggregate, Repository};
//! # use es_projections::{ReadModelSource, StateRows};
//! # fn demo<A: Aggregate, P: StateRows<A>>(store: es_postgres::PgEventStore, projector: P) {
//! let source = ReadModelSource::new(store.pool().clone(), projector);
//! let repository = Repository::<A>::new(store).with_state_source(Arc::new(source));
//! # }
//! ```
//!
//! The row is read through the projection's logical name (the view over the live generation),
//! so a shadow rebuild switching generations never hands out a half-built table's row.

use std::marker::PhantomData;

use async_trait::async_trait;
use es_core::{Aggregate, StateSource, StoreError, StreamId, StreamVersion};
use sqlx::postgres::PgRow;
use sqlx::PgPool;

use crate::error::ProjectorError;
use crate::projector::Projector;

/// A projector whose read table holds, per stream, an aggregate's state and the stream version
/// it reflects.
///
/// The row must be exactly the fold of the stream's events up to that version (a projector that
/// writes the version of the last event it applied to the row, in the same statement, gives
/// that): the repository decides commands on it.
pub trait StateRows<A: Aggregate>: Projector {
    /// The query for one stream's row, on the projection's logical table names (its views);
    /// `$1` is the stream id. At most one row.
    fn state_query(&self) -> &str;

    /// The state and stream version a row holds.
    fn state_from_row(&self, row: &PgRow) -> Result<(A, StreamVersion), ProjectorError>;
}

/// A [`StateSource`] backed by a projection's read table: see the [module docs](self).
pub struct ReadModelSource<A, P> {
    pool: PgPool,
    projector: P,
    state: PhantomData<fn() -> A>,
}

impl<A: Aggregate, P: StateRows<A>> ReadModelSource<A, P> {
    /// A source reading `projector`'s rows on `pool`.
    pub fn new(pool: PgPool, projector: P) -> Self {
        Self {
            pool,
            projector,
            state: PhantomData,
        }
    }
}

#[async_trait]
impl<A: Aggregate, P: StateRows<A>> StateSource<A> for ReadModelSource<A, P> {
    async fn load_state(
        &self,
        stream: &StreamId,
    ) -> Result<Option<(A, StreamVersion)>, StoreError> {
        let name = self.projector.name();
        let row = sqlx::query(self.projector.state_query())
            .bind(stream.as_str())
            .fetch_optional(&self.pool)
            .await;
        let row = match row {
            Ok(row) => row,
            // Not set up yet (no worker has run): no state, a full replay.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
                return Ok(None)
            }
            Err(error) => {
                return Err(es_postgres::error::storage(
                    format!("reading {stream}'s row of projection {name}"),
                    error,
                ))
            }
        };
        row.map(|row| {
            self.projector.state_from_row(&row).map_err(|source| {
                StoreError::storage(
                    format!("projection {name}: the row of {stream} does not map to a state"),
                    false,
                    source,
                )
            })
        })
        .transpose()
    }
}
