-- The projector (a worker binary's `run` and `rebuild`): reads events, keeps the checkpoint,
-- lease, ledger and dead-letter rows, and creates its own tables and views in the schema
-- (a projector's `setup`), which it then owns. CREATE on the schema lets it create objects
-- there, not alter others' (ALTER, DROP and DISABLE TRIGGER need ownership). The grantee is
-- the setting es.grant_role (see grant_common.sql).
DO $$
DECLARE
    grantee text := current_setting('es.grant_role');
BEGIN
    EXECUTE format('GRANT CREATE ON SCHEMA %I TO %I', current_schema(), grantee);
    EXECUTE format('GRANT SELECT ON es_events, es_event_types TO %I', grantee);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON es_projections, es_applied_ranges, es_dead_letters TO %I', grantee);
END
$$
