-- How many positions in ($3, $4] the ledger of generation $2 records as delivered.
SELECT coalesce(sum(least(last_position, $4) - greatest(first_position, $3 + 1) + 1), 0)::bigint
FROM es_applied_ranges
WHERE projection = $1 AND generation = $2 AND last_position > $3 AND first_position <= $4
