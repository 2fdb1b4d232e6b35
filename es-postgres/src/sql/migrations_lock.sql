-- Serialises concurrent `migrate` calls (every process may call it at start-up) for the rest of
-- the migrating transaction; a transaction-scoped lock, so it holds through transaction-pooling
-- proxies and is released by the commit.
SELECT pg_advisory_xact_lock(hashtextextended('es_schema_migrations', 0))
