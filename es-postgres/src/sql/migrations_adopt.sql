-- Moves one of this crate's rows from sqlx's shared table into its own ledger, in the migrating
-- transaction: afterwards an application's sqlx migrator no longer finds a version it does not
-- know ("previously applied but is missing in the resolved migrations").
WITH moved AS (
    DELETE FROM _sqlx_migrations WHERE version = $1 AND description = $2
    RETURNING version, description, checksum, execution_time
)
INSERT INTO es_schema_migrations (version, description, checksum, execution_ms)
SELECT version, description, checksum, execution_time / 1000000 FROM moved
ON CONFLICT (version) DO NOTHING
