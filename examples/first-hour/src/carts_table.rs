//! The read side: one row per cart in the table `carts`, kept up to date by a worker.

use async_trait::async_trait;
use es_core::{EventEnvelope, StreamId};
use es_projections::{Projector, ProjectorError, Tables};
use sqlx::PgConnection;

use crate::cart::CartEvent;

/// Writes `carts (cart_id, items, checked_out, stream_version)`.
pub struct CartsProjector;

#[async_trait]
impl Projector for CartsProjector {
    type Event = CartEvent;

    fn name(&self) -> &str {
        "carts"
    }

    fn tables(&self) -> &[&'static str] {
        &["carts"]
    }

    /// Event type names are shared by the whole log: read only the carts' streams.
    fn accepts_stream(&self, stream: &StreamId) -> bool {
        stream.as_str().starts_with("cart-")
    }

    /// Creates the table under the name the runtime gives (`carts_g1`, then `carts_g2` after
    /// a rebuild); readers query the view `carts`.
    async fn setup(&self, conn: &mut PgConnection, tables: &Tables) -> Result<(), ProjectorError> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                cart_id text PRIMARY KEY,
                items bigint NOT NULL DEFAULT 0,
                checked_out boolean NOT NULL DEFAULT false,
                stream_version bigint NOT NULL
            )",
            tables.get("carts")?
        );
        sqlx::query(&sql).execute(conn).await?;
        Ok(())
    }

    /// Applies a batch inside the worker's transaction; the worker's checkpoint commits with it.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        events: &[EventEnvelope<CartEvent>],
    ) -> Result<(), ProjectorError> {
        let sql = format!(
            "INSERT INTO {} AS c (cart_id, items, checked_out, stream_version)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (cart_id) DO UPDATE SET
                 items = c.items + excluded.items,
                 checked_out = c.checked_out OR excluded.checked_out,
                 stream_version = excluded.stream_version",
            tables.get("carts")?
        );
        for e in events {
            let (items, checked_out) = match &e.event {
                CartEvent::ItemAdded { quantity, .. } => (i64::from(*quantity), false),
                CartEvent::CheckedOut => (0, true),
            };
            sqlx::query(&sql)
                .bind(e.stream_id.as_str())
                .bind(items)
                .bind(checked_out)
                .bind(e.stream_version.0 as i64)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}
