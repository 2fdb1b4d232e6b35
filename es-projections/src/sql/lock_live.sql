-- The switch's lock on the live row: waits for a live worker's batch in flight (hold.sql) and
-- keeps the next one out until the switch commits.
SELECT generation FROM es_projections WHERE name = $1 AND role = 'live' FOR UPDATE
