-- Deletes a projection's generations of role $2 ('retired' after a switch, 'shadow' when a
-- shadow rebuild is abandoned) with their ledger and dead letters; returns their numbers.
WITH gone AS (
    DELETE FROM es_projections WHERE name = $1 AND role = $2 RETURNING generation
), ledger AS (
    DELETE FROM es_applied_ranges a USING gone
    WHERE a.projection = $1 AND a.generation = gone.generation
), unparked AS (
    DELETE FROM es_dead_letters d USING gone
    WHERE d.projection = $1 AND d.generation = gone.generation
)
SELECT generation FROM gone
