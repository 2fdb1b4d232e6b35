-- Ledger runs that overlap the one before them: positions delivered twice.
SELECT first_position, last_position FROM (
    SELECT first_position, last_position,
           max(last_position) OVER (ORDER BY first_position
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
    FROM es_applied_ranges WHERE projection = $1 AND generation = $2
) r
WHERE before >= first_position
ORDER BY first_position
LIMIT 10
