//! Turning `es_events` rows into [`RecordedEvent`]s.

use chrono::{DateTime, Utc};
use es_core::{GlobalPosition, Metadata, RecordedEvent, StoreError, StreamId, StreamVersion};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::storage;

/// Decodes one row of `SELECT global_position, event_id, stream_id, stream_version, event_type,
/// schema_version, payload, metadata, recorded_at` (by name: the log reader's rows carry two
/// more columns in front).
pub fn recorded_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let get = |e| storage("decoding an es_events row", e);
    let stream_id: String = row.try_get("stream_id").map_err(get)?;
    let stream_id = StreamId::new(stream_id).map_err(|e| StoreError::Storage {
        message: "stored stream id is invalid".into(),
        transient: false,
        source: Box::new(e),
    })?;
    let stream_version: i64 = row.try_get("stream_version").map_err(get)?;
    let schema_version: i32 = row.try_get("schema_version").map_err(get)?;
    let metadata: Value = row.try_get("metadata").map_err(get)?;
    Ok(RecordedEvent {
        event_id: row.try_get::<Uuid, _>("event_id").map_err(get)?,
        stream_id,
        stream_version: StreamVersion(stream_version.max(0) as u64),
        global_position: GlobalPosition(row.try_get("global_position").map_err(get)?),
        event_type: row.try_get("event_type").map_err(get)?,
        schema_version: schema_version.max(0) as u32,
        payload: row.try_get("payload").map_err(get)?,
        metadata: lossless_metadata(metadata),
        recorded_at: row
            .try_get::<DateTime<Utc>, _>("recorded_at")
            .map_err(get)?,
    })
}

/// Metadata written by another tool may not fit [`Metadata`]'s fields; keep it all as headers
/// rather than fail or drop it.
fn lossless_metadata(value: Value) -> Metadata {
    if value.as_object().is_some_and(|m| m.is_empty()) {
        return Metadata::default();
    }
    match <Metadata as serde::Deserialize>::deserialize(&value) {
        Ok(metadata) => metadata,
        Err(_) => Metadata {
            headers: match value {
                Value::Object(map) => map,
                other => [("value".to_string(), other)].into_iter().collect(),
            },
            ..Metadata::default()
        },
    }
}
