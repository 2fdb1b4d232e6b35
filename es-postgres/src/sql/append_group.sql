-- Group commit: the appends of several writers, each to its own stream at an exact expected
-- version (0: no events yet), in ONE statement and so one transaction and one commit.
-- Every array holds one element per event; $2 and $3 repeat each append's stream and expected
-- version for each of its events, $4 numbers the events within their append (1, 2, ...).
-- An append's rows are inserted only if its stream is exactly at the expected version: its
-- highest version (none: 0) equals the expected one (versions are contiguous from 1). The check
-- reads the statement's snapshot, so it gives the same answer for every row of an append: an
-- append is inserted whole or not at all, whatever happens to the others. A writer that
-- committed the next version after the snapshot was taken collides on the unique index
-- (stream_id, stream_version), which fails the whole statement: the caller then appends one by
-- one. The caller never puts two appends to the same stream in one statement, and orders the
-- appends by stream (so that concurrent groups take the index entries in one order).
--
-- The check is a correlated scalar subquery on purpose: PostgreSQL may turn an EXISTS into a
-- hashed subplan (one full scan of es_events per execution, then a hash lookup per row), never a
-- scalar subquery, which each row runs on its own: on any table but a tiny one, a probe of the
-- index (stream_id, stream_version) read backwards from the stream's end. And the committers
-- send this statement unprepared (group_commit.rs): a prepared statement's generic plan, made
-- while es_events was young, would be kept as the table grows (until an ANALYZE invalidates
-- it), scanning the whole table for every group.
INSERT INTO es_events
    (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT e.event_id, e.stream_id, e.expected + e.n, e.event_type, e.schema_version, e.payload,
       e.metadata
FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::int[],
            $7::jsonb[], $8::jsonb[]) WITH ORDINALITY
         AS e(event_id, stream_id, expected, n, event_type, schema_version, payload, metadata,
              ordinal)
WHERE coalesce((SELECT max(x.stream_version) FROM es_events x WHERE x.stream_id = e.stream_id),
               0) = e.expected
ORDER BY e.ordinal
RETURNING stream_id, stream_version, global_position
