-- Committed events in ($3, $4] that the ledger of generation $2 does not record and that are not
-- in the cursor's holes ($5, $6: starts and ends), in position order. The gaps between ledger
-- runs are few, so this reads the index of es_events only inside them.
WITH runs AS (
    SELECT first_position, last_position
    FROM es_applied_ranges
    WHERE projection = $1 AND generation = $2 AND last_position > $3 AND first_position <= $4
), gaps AS (
    SELECT coalesce(max(last_position) OVER (ORDER BY first_position
                                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                    $3) + 1 AS gap_first,
           first_position - 1 AS gap_last
    FROM runs
    UNION ALL
    SELECT coalesce(max(last_position), $3) + 1, $4 FROM runs
)
SELECT e.global_position, e.stream_id, e.stream_version, e.event_type, e.schema_version
FROM gaps g
JOIN es_events e ON e.global_position BETWEEN g.gap_first AND least(g.gap_last, $4)
WHERE g.gap_first <= g.gap_last
  AND NOT EXISTS (SELECT 1 FROM unnest($5::bigint[], $6::bigint[]) AS h(first_position, last_position)
                  WHERE e.global_position BETWEEN h.first_position AND h.last_position)
ORDER BY e.global_position
