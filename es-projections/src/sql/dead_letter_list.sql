-- Dead letters of live generations for an operator: open ones, or all when $2; of one
-- projection or consumer when $1 is not null. Oldest first.
SELECT d.id, d.projection, d.generation, d.global_position, d.stream_id, d.stream_version,
       d.event_type, d.schema_version, d.error, d.cause, d.attempts, d.state, d.requested,
       d.requested_by, d.requested_at, d.reason, d.parked_at, d.resolved_at, d.resolved_by
FROM es_dead_letters d
JOIN es_projections p ON p.name = d.projection AND p.generation = d.generation AND p.role = 'live'
WHERE ($1::text IS NULL OR d.projection = $1) AND (d.state = 'open' OR $2)
ORDER BY d.projection, d.global_position
