-- Creates the next generation as a shadow built by version $2 of the projector, unless there is
-- one already. The next number is past every generation, retired ones included.
INSERT INTO es_projections (name, generation, role, state, code_version)
SELECT $1, max(generation) + 1, 'shadow', 'rebuilding', $2 FROM es_projections WHERE name = $1
ON CONFLICT DO NOTHING
