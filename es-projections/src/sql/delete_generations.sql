-- Deletes a projection's generations of role $2 ('retired' after a switch, 'shadow' when a
-- shadow rebuild is abandoned) with their ledger; returns their generation numbers.
WITH gone AS (
    DELETE FROM es_projections WHERE name = $1 AND role = $2 RETURNING generation
), ledger AS (
    DELETE FROM es_applied_ranges a USING gone
    WHERE a.projection = $1 AND a.generation = gone.generation
)
SELECT generation FROM gone
