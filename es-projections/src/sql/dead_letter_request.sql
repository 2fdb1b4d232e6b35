-- An operator's request on open dead letters of a projection's or consumer's live generation:
--   $2 'retry' or 'skip'; $3 who asks; $4 the reason (required for a skip, kept with it);
--   $5 a position: that letter, and for a retry every open letter before it in its stream
--      (they go first: per-stream order); $6 a stream: its open letters; neither: all open.
-- Returns the ids requested.
WITH live AS (
    SELECT generation FROM es_projections WHERE name = $1 AND role = 'live'
), target AS (
    SELECT stream_id, stream_version FROM es_dead_letters
    WHERE projection = $1 AND generation = (SELECT generation FROM live)
      AND state = 'open' AND global_position = $5
)
UPDATE es_dead_letters d
-- A retry never overrides a skip asked for before it.
SET requested = CASE WHEN $2 = 'retry' AND d.requested = 'skip' THEN 'skip' ELSE $2 END,
    requested_by = $3, requested_at = clock_timestamp(),
    reason = coalesce($4, d.reason)
WHERE d.projection = $1 AND d.generation = (SELECT generation FROM live) AND d.state = 'open'
  AND CASE
        WHEN $5::bigint IS NOT NULL AND $2 = 'retry' THEN EXISTS (
            SELECT 1 FROM target t
            WHERE t.stream_id = d.stream_id AND d.stream_version <= t.stream_version)
        WHEN $5::bigint IS NOT NULL THEN d.global_position = $5
        WHEN $6::text IS NOT NULL THEN d.stream_id = $6
        ELSE true
      END
RETURNING d.id
