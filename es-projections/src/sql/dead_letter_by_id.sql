-- Dead letters by id, as an operator's request left them (to report what was carried out).
SELECT id, projection, generation, global_position, stream_id, stream_version, event_type,
       schema_version, error, cause, attempts, state, requested, requested_by, requested_at,
       reason, parked_at, resolved_at, resolved_by
FROM es_dead_letters
WHERE id = ANY($1::bigint[])
ORDER BY global_position
