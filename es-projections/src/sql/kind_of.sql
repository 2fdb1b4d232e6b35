-- The kind of a projection's or consumer's live row, read in a snapshot of its own (see
-- checkpoint::ensure_row).
SELECT kind FROM es_projections WHERE name = $1 AND role = 'live'
