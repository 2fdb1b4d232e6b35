-- Creates the next generation as a shadow, unless there is one already.
INSERT INTO es_projections (name, generation, role, state)
SELECT $1, max(generation) + 1, 'shadow', 'rebuilding' FROM es_projections WHERE name = $1
ON CONFLICT DO NOTHING
