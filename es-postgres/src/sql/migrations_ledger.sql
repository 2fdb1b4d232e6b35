-- The framework's own migration ledger, beside any application's (sqlx's `_sqlx_migrations`
-- included): which of es-postgres's embedded migrations were applied, with their checksums.
CREATE TABLE IF NOT EXISTS es_schema_migrations (
    version      bigint      PRIMARY KEY,
    description  text        NOT NULL,
    checksum     bytea       NOT NULL,
    installed_on timestamptz NOT NULL DEFAULT now(),
    execution_ms bigint      NOT NULL
)
