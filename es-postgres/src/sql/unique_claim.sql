-- Claims unique values for streams ($1 scopes, $2 values, $3 streams; one element per claim),
-- in key order so that two commits claiming the same values wait for each other in one
-- direction only. Returns the claims that were free. A value another transaction is claiming
-- uncommitted makes this wait for it; the caller then reads who holds the rest.
INSERT INTO es_unique_claims (scope, value, stream_id)
SELECT c.scope, c.value, c.stream_id
FROM unnest($1::text[], $2::text[], $3::text[]) AS c(scope, value, stream_id)
ORDER BY c.scope, c.value
ON CONFLICT (scope, value) DO NOTHING
RETURNING scope, value
