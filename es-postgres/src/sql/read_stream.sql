SELECT global_position, event_id, stream_id, stream_version, event_type, schema_version,
       payload, metadata, recorded_at
FROM es_events
WHERE stream_id = $1 AND stream_version > $2 AND stream_version <= $3
ORDER BY stream_version
