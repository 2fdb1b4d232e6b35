-- A generation's open dead letters, by stream in stream order: the chains the lease holder
-- walks to carry out requests.
SELECT id, projection, generation, global_position, stream_id, stream_version, event_type,
       schema_version, error, cause, attempts, state, requested, requested_by, requested_at,
       reason, parked_at, resolved_at, resolved_by
FROM es_dead_letters
WHERE projection = $1 AND generation = $2 AND state = 'open'
ORDER BY stream_id, stream_version
