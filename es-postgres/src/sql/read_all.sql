SELECT global_position, event_id, stream_id, stream_version, event_type, schema_version,
       payload, metadata, recorded_at
FROM es_events
WHERE global_position > $1
ORDER BY global_position
LIMIT $2
