-- Records an applied framework migration, in the transaction that applied it.
INSERT INTO es_schema_migrations (version, description, checksum, execution_ms)
VALUES ($1, $2, $3, $4)
