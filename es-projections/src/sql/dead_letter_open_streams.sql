-- The streams with an open dead letter in a generation: their later events wait behind it.
SELECT DISTINCT stream_id FROM es_dead_letters
WHERE projection = $1 AND generation = $2 AND state = 'open'
