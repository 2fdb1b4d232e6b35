-- Group commit: the appends of several writers, each to its own stream at an exact expected
-- version (0: no events yet), in ONE statement and so one transaction and one commit.
-- Every array holds one element per event; $2 and $3 repeat each append's stream and expected
-- version for each of its events, $4 numbers the events within their append (1, 2, ...).
-- An append's rows are inserted only if its stream is exactly at the expected version: the event
-- at that version exists (for 0: the stream has none) and the next one does not. The check reads
-- the statement's snapshot, so it gives the same answer for every row of an append: an append
-- is inserted whole or not at all, whatever happens to the others. A writer that committed the
-- next version after the snapshot was taken collides on the unique index
-- (stream_id, stream_version), which fails the whole statement: the caller then appends one by
-- one. The caller never puts two appends to the same stream in one statement, and orders the
-- appends by stream (so that concurrent groups take the index entries in one order).
INSERT INTO es_events
    (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT e.event_id, e.stream_id, e.expected + e.n, e.event_type, e.schema_version, e.payload,
       e.metadata
FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::int[],
            $7::jsonb[], $8::jsonb[]) WITH ORDINALITY
         AS e(event_id, stream_id, expected, n, event_type, schema_version, payload, metadata,
              ordinal)
WHERE CASE WHEN e.expected = 0
           THEN NOT EXISTS (SELECT 1 FROM es_events x WHERE x.stream_id = e.stream_id)
           ELSE EXISTS (SELECT 1 FROM es_events x
                        WHERE x.stream_id = e.stream_id AND x.stream_version = e.expected)
                AND NOT EXISTS (SELECT 1 FROM es_events x
                                WHERE x.stream_id = e.stream_id
                                  AND x.stream_version = e.expected + 1)
      END
ORDER BY e.ordinal
RETURNING stream_id, stream_version, global_position
