-- Creates a projection's live row (generation 1) if it has none yet.
INSERT INTO es_projections (name) VALUES ($1) ON CONFLICT DO NOTHING
