-- Every generation (of projections, reactors and publishers), with how far behind the log it
-- is and its open dead letters.
SELECT p.name, p.kind, p.generation, p.role, p.state, p.code_version, p.watermark, p.events_applied,
       (SELECT coalesce(sum((h->>'end')::bigint - (h->>'start')::bigint + 1), 0)::bigint
          FROM jsonb_array_elements(p.holes) h) AS hole_positions,
       -- Positions after the checkpoint (an upper bound of the events it has not seen): no
       -- count over the log, so that status stays fast on a long one. The CLI counts the
       -- events a projection would apply (status::count_to_apply).
       greatest((SELECT coalesce(max(e.global_position), 0) FROM es_events e) - p.watermark, 0)
         AS lag_events,
       coalesce(extract(epoch FROM now() - (SELECT min(e.recorded_at) FROM
           (SELECT recorded_at FROM es_events e WHERE e.global_position > p.watermark
            ORDER BY e.global_position LIMIT 1) e))::float8, 0) AS lag_seconds,
       CASE WHEN p.lease_expires_at > now() THEN p.owner END AS owner,
       p.last_error, p.last_error_at,
       p.last_verified_at, p.last_verified_ok, p.last_verify_report,
       (SELECT count(*) FROM es_dead_letters d
         WHERE d.projection = p.name AND d.generation = p.generation AND d.state = 'open')
         AS dead_letters
FROM es_projections p
WHERE p.role IN ('live', 'shadow', 'retired')
ORDER BY p.name, p.generation
