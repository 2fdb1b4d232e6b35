//! Turning `es_events` rows into [`RecordedEvent`]s.
//!
//! Columns are read by position, not by name: a name lookup hashes the name for every column of
//! every row, which shows in profiles of a replay. Every query that returns events selects
//! `global_position, event_id, stream_id, stream_version, event_type, schema_version, payload,
//! metadata, recorded_at` in this order, from a known first column (a test checks the SQL).

use chrono::{DateTime, Utc};
use es_core::{
    FoldEvent, GlobalPosition, Metadata, Payload, RecordedEvent, StoreError, StreamId,
    StreamVersion,
};
use serde_json::Value;
use sqlx::postgres::{PgRow, PgValueFormat, PgValueRef};
use sqlx::{Row, ValueRef};
use uuid::Uuid;

use crate::error::storage;

/// Decodes a row whose first columns are the event columns.
pub fn recorded_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    recorded_event_at(row, 0)
}

/// Decodes the event columns of a row, starting at column `first`.
pub fn recorded_event_at(row: &PgRow, first: usize) -> Result<RecordedEvent, StoreError> {
    let get = |e| storage("decoding an es_events row", e);
    let stream_id: String = row.try_get(first + 2).map_err(get)?;
    let stream_id = StreamId::from_stored(stream_id)
        .map_err(|e| StoreError::storage("stored stream id is invalid", false, e))?;
    let stream_version: i64 = row.try_get(first + 3).map_err(get)?;
    let schema_version: i32 = row.try_get(first + 5).map_err(get)?;
    Ok(RecordedEvent {
        event_id: row.try_get::<Uuid, _>(first + 1).map_err(get)?,
        stream_id,
        stream_version: StreamVersion(stream_version.max(0) as u64),
        global_position: GlobalPosition(row.try_get(first).map_err(get)?),
        event_type: row.try_get(first + 4).map_err(get)?,
        schema_version: schema_version.max(0) as u32,
        payload: payload(row, first + 6)?,
        metadata: metadata(row, first + 7)?,
        recorded_at: row.try_get::<DateTime<Utc>, _>(first + 8).map_err(get)?,
    })
}

/// Decodes a row of `sql/read_stream_for_fold.sql`: `global_position, stream_version,
/// event_type, schema_version, payload`.
pub fn fold_event(row: &PgRow) -> Result<FoldEvent, StoreError> {
    let get = |e| storage("decoding an es_events row", e);
    let stream_version: i64 = row.try_get(1).map_err(get)?;
    let schema_version: i32 = row.try_get(3).map_err(get)?;
    Ok(FoldEvent {
        global_position: GlobalPosition(row.try_get(0).map_err(get)?),
        stream_version: StreamVersion(stream_version.max(0) as u64),
        event_type: row.try_get(2).map_err(get)?,
        schema_version: schema_version.max(0) as u32,
        payload: payload(row, 4)?,
    })
}

/// The payload as the JSON text the server sent, left for the decoder to parse once, straight
/// into the event type (see [`Payload`]).
fn payload(row: &PgRow, column: usize) -> Result<Payload, StoreError> {
    let raw = row
        .try_get_raw(column)
        .map_err(|e| storage("decoding an es_events row's payload", e))?;
    let bytes = match raw.as_bytes() {
        // Binary jsonb: a version byte (1), then the text.
        Ok([1, text @ ..]) if raw.format() == PgValueFormat::Binary => text,
        Ok(text) if raw.format() == PgValueFormat::Text => text,
        Ok(_) => {
            return Err(malformed(
                "payload",
                "an unknown jsonb format version".into(),
            ))
        }
        Err(e) => return Err(malformed("payload", e.to_string())),
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(Payload::from_json_text(text.to_owned())),
        Err(e) => Err(malformed("payload", e.to_string())),
    }
}

fn malformed(column: &str, reason: String) -> StoreError {
    StoreError::storage_message(
        format!("decoding an es_events row's {column}: {reason}"),
        false,
    )
}

/// Most events carry no metadata: `{}` is recognised from its bytes, without parsing.
fn metadata(row: &PgRow, column: usize) -> Result<Metadata, StoreError> {
    let get = |e| storage("decoding an es_events row's metadata", e);
    let raw = row.try_get_raw(column).map_err(get)?;
    if is_empty_object(&raw) {
        return Ok(Metadata::default());
    }
    let value: Value = row.try_get(column).map_err(get)?;
    Ok(lossless_metadata(value))
}

/// Whether a json or jsonb value is `{}` (binary jsonb starts with a version byte, 1).
fn is_empty_object(raw: &PgValueRef<'_>) -> bool {
    !raw.is_null() && matches!(raw.as_bytes(), Ok([1, b'{', b'}']) | Ok([b'{', b'}']))
}

/// Metadata written by another tool may not fit [`Metadata`]'s fields; keep it all as headers
/// rather than fail or drop any of it.
fn lossless_metadata(value: Value) -> Metadata {
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

#[cfg(test)]
mod tests {
    /// The event columns, in the order every event query selects them.
    const EVENT_COLUMNS: [&str; 9] = [
        "global_position",
        "event_id",
        "stream_id",
        "stream_version",
        "event_type",
        "schema_version",
        "payload",
        "metadata",
        "recorded_at",
    ];

    /// The decoder reads columns by position: every event query must select them in order.
    #[test]
    fn every_event_query_selects_the_columns_in_order() {
        let select = |prefix: &str| {
            let columns: Vec<String> = EVENT_COLUMNS
                .iter()
                .map(|c| format!("{prefix}{c}"))
                .collect();
            columns.join(", ")
        };
        for (file, sql, prefix) in [
            ("read_all.sql", include_str!("sql/read_all.sql"), ""),
            ("read_at.sql", include_str!("sql/read_at.sql"), ""),
            ("read_stream.sql", include_str!("sql/read_stream.sql"), ""),
            ("read_log.sql", include_str!("sql/read_log.sql"), "b."),
        ] {
            let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                flat.contains(&select(prefix)),
                "{file} selects {}",
                select(prefix)
            );
        }
    }
}
