-- Who holds each of these values ($1 scopes, $2 values).
SELECT c.scope, c.value, c.stream_id
FROM es_unique_claims c
JOIN unnest($1::text[], $2::text[]) AS q(scope, value) ON c.scope = q.scope AND c.value = q.value
