-- The rows of sqlx's shared table that this crate wrote before it had a ledger of its own:
-- applied with success, under one of its versions and descriptions ($1, $2 in pairs). An
-- application's own migration that happens to use a low version number has another
-- description and is left alone.
SELECT s.version, s.description, s.checksum, s.execution_time
FROM _sqlx_migrations s
JOIN unnest($1::bigint[], $2::text[]) AS ours(version, description)
  ON ours.version = s.version AND ours.description = s.description
WHERE s.success
ORDER BY s.version
