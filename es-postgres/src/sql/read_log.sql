-- One batch of the global log for a gap-aware reader, in ONE statement so that the snapshot
-- horizon returned and the rows returned come from the same snapshot (pg_current_snapshot()
-- returns the statement's active snapshot).
--   $1 watermark: return visible rows above it, in position order, at most $2 of them;
--   $3, $4: the starts and ends of holes below the watermark: return rows now visible there, in
--   position order, at most $2 of them too (a long transaction that committed thousands of rows
--   into holes is delivered over several batches).
-- The horizon row is always returned, with or without events (LEFT JOIN): the snapshot's xmin
-- and xmax, and whether the reader's transaction already held a transaction id when the
-- statement began (then no id it can obtain afterwards is newer than this snapshot).
WITH horizon AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
           pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax,
           pg_current_xact_id_if_assigned() IS NOT NULL AS reader_has_xid
), batch AS (
    (SELECT * FROM es_events WHERE global_position > $1 ORDER BY global_position LIMIT $2)
    UNION ALL
    -- LATERAL: one index range scan per hole. A plain join under ORDER BY ... LIMIT lets the
    -- planner walk the whole primary key in order, filtering every row against every hole.
    (SELECT e.* FROM unnest($3::bigint[], $4::bigint[]) AS h(first_position, last_position)
     CROSS JOIN LATERAL (
         SELECT * FROM es_events x
         WHERE x.global_position BETWEEN h.first_position AND h.last_position
         ORDER BY x.global_position LIMIT $2) e
     ORDER BY e.global_position LIMIT $2)
)
SELECT horizon.xmin, horizon.xmax, horizon.reader_has_xid,
       b.global_position, b.event_id, b.stream_id, b.stream_version, b.event_type,
       b.schema_version, b.payload, b.metadata, b.recorded_at
FROM horizon LEFT JOIN batch b ON true
