-- The framework migrations applied so far, with their checksums.
SELECT version, checksum FROM es_schema_migrations ORDER BY version
