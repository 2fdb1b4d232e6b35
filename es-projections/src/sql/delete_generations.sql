-- Deletes a projection's generations of role $2 ('retired' ones no longer needed for a rollback,
-- or a 'shadow' that is abandoned), except generation $3 when given, with their ledger and dead
-- letters; returns their numbers so that their tables can be dropped.
WITH gone AS (
    DELETE FROM es_projections
    WHERE name = $1 AND role = $2 AND generation IS DISTINCT FROM $3
    RETURNING generation
), ledger AS (
    DELETE FROM es_applied_ranges a USING gone
    WHERE a.projection = $1 AND a.generation = gone.generation
), unparked AS (
    DELETE FROM es_dead_letters d USING gone
    WHERE d.projection = $1 AND d.generation = gone.generation
)
SELECT generation FROM gone
