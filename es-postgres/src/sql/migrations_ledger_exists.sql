-- Whether the framework's migration ledger exists (a database never migrated has none). Looks
-- at the catalog only, which every role may read: no privilege on the table is needed.
SELECT to_regclass('es_schema_migrations') IS NOT NULL
