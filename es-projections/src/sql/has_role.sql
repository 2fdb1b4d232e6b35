-- Whether a generation still has role $3 (a switch, a rollback or a drop may have changed it).
SELECT EXISTS (SELECT 1 FROM es_projections WHERE name = $1 AND generation = $2 AND role = $3)
