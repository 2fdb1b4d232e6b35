-- Creates the live row (generation 1) of a projection or consumer ($2 its kind, $3 the version of
-- its code) if it has none yet, and returns the kind the row was created for: a name is one
-- thing only.
WITH created AS (
    INSERT INTO es_projections (name, kind, code_version) VALUES ($1, $2, $3)
    ON CONFLICT DO NOTHING RETURNING kind
)
SELECT kind FROM created
UNION ALL
SELECT kind FROM es_projections WHERE name = $1 AND role = 'live'
LIMIT 1
