-- Releases unique values, each only if the releasing stream holds it.
-- $1 scopes, $2 values, $3 the releasing streams: one element per release.
DELETE FROM es_unique_claims c
USING unnest($1::text[], $2::text[], $3::text[]) AS r(scope, value, stream_id)
WHERE c.scope = r.scope AND c.value = r.value AND c.stream_id = r.stream_id
