-- The events at the given positions (those that exist), in position order: a dead letter's
-- event read again for its retry.
SELECT global_position, event_id, stream_id, stream_version, event_type, schema_version,
       payload, metadata, recorded_at
FROM es_events
WHERE global_position = ANY($1::bigint[])
ORDER BY global_position
