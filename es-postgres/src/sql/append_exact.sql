-- Appends a batch of events to a stream expected at an exact version ($2; 0: no events yet), in
-- one statement. Rows are inserted only if the stream has reached that version (the event at
-- version $2 exists; for 0, the stream has no event); a writer that expected a version the
-- stream has already passed collides on the unique index (stream_id, stream_version), which the
-- store reports as Conflict. Simpler than append.sql (no max() scan, no aggregates): this is the
-- command path's statement.
INSERT INTO es_events
    (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT e.event_id, $1, $2 + e.n, e.event_type, e.schema_version, e.payload, e.metadata
FROM unnest($3::uuid[], $4::text[], $5::int[], $6::jsonb[], $7::jsonb[]) WITH ORDINALITY
         AS e(event_id, event_type, schema_version, payload, metadata, n)
WHERE CASE WHEN $2 = 0
           THEN NOT EXISTS (SELECT 1 FROM es_events WHERE stream_id = $1)
           ELSE EXISTS (SELECT 1 FROM es_events WHERE stream_id = $1 AND stream_version = $2)
      END
ORDER BY e.n
RETURNING stream_version, global_position
