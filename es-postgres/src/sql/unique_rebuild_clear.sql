-- Clears the scopes being rebuilt ($1).
DELETE FROM es_unique_claims WHERE scope = ANY($1::text[])
