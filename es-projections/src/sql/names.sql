-- The names that have a checkpoint (any kind), for an error about one that has none.
SELECT DISTINCT name FROM es_projections ORDER BY name
