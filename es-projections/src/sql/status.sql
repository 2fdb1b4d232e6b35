-- Every live and shadow generation (of projections, reactors and publishers), with its lag
-- against the log and its open dead letters.
SELECT p.name, p.kind, p.generation, p.role, p.state, p.watermark, p.events_applied,
       (SELECT coalesce(sum((h->>'end')::bigint - (h->>'start')::bigint + 1), 0)::bigint
          FROM jsonb_array_elements(p.holes) h) AS hole_positions,
       (SELECT count(*) FROM (SELECT 1 FROM es_events e
           WHERE e.global_position > p.watermark LIMIT 10000000) t) AS lag_events,
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
WHERE p.role IN ('live', 'shadow')
ORDER BY p.name, p.generation
