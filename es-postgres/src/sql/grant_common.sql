-- What every role of the framework needs, granted to the role named by the setting
-- es.grant_role (set for this transaction by roles.rs, or by hand with
-- `SET es.grant_role = 'app_writer'` before running this file in psql): to connect, to find the
-- schema's objects, and to read the migration ledger that each process checks at start-up.
-- format('%I') quotes the identifiers; GRANT takes no bind parameters.
DO $$
DECLARE
    grantee text := current_setting('es.grant_role');
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), grantee);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), grantee);
    EXECUTE format('GRANT SELECT ON es_schema_migrations TO %I', grantee);
END
$$
