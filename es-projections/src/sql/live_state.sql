-- The live generation's cursor, state and last error (read-your-writes waits on it).
SELECT watermark, holes, state, last_error FROM es_projections WHERE name = $1 AND role = 'live'
