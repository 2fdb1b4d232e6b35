-- Whether a generation is (still) the live one.
SELECT EXISTS (SELECT 1 FROM es_projections WHERE name = $1 AND generation = $2 AND role = 'live')
