-- Inserts rebuilt claims ($1 scopes, $2 values, $3 holders).
INSERT INTO es_unique_claims (scope, value, stream_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
