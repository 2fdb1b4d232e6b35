-- Appends a batch of events to one stream in one statement (one round trip, one implicit
-- transaction). Rows are inserted only if the stream's current version satisfies the expected
-- version ($2 kind, $3 exact version); a concurrent writer that got there first makes the unique
-- index (stream_id, stream_version) reject this insert, which the store reports as Conflict.
WITH current_version AS (
    SELECT max(stream_version) AS version FROM es_events WHERE stream_id = $1
), allowed AS (
    SELECT coalesce(version, 0) AS version
    FROM current_version
    WHERE CASE $2::text
        WHEN 'any' THEN true
        WHEN 'no_stream' THEN version IS NULL
        WHEN 'stream_exists' THEN version IS NOT NULL
        ELSE coalesce(version, 0) = $3::bigint
    END
), inserted AS (
    INSERT INTO es_events
        (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
    SELECT e.event_id, $1, allowed.version + e.n, e.event_type, e.schema_version, e.payload, e.metadata
    FROM allowed,
         unnest($4::uuid[], $5::text[], $6::int[], $7::jsonb[], $8::jsonb[]) WITH ORDINALITY
             AS e(event_id, event_type, schema_version, payload, metadata, n)
    ORDER BY e.n
    RETURNING stream_version, global_position
)
SELECT (SELECT version FROM current_version) AS current_version,
       (SELECT max(stream_version) FROM inserted) AS last_version,
       (SELECT max(global_position) FROM inserted) AS last_position
