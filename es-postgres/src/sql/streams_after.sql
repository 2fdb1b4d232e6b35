-- The streams of the next $2 committed events after position $1, each with how many of them it
-- has: `status` counts from these what a projection would apply (by its streams) without
-- reading payloads. At most $2 rows of the position index are read.
SELECT stream_id, count(*) AS events
FROM (
    SELECT stream_id FROM es_events
    WHERE global_position > $1
    ORDER BY global_position
    LIMIT $2
) next
GROUP BY stream_id
