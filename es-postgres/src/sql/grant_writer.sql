-- The writer (the application appending events through PgEventStore): appends and reads events
-- and the write side's own tables. No UPDATE or DELETE on es_events: the trigger refuses them
-- anyway, and without the privilege a writer is refused before any trigger runs; not being the
-- owner, it cannot disable that trigger either. es_projections is read for read-your-writes
-- (wait_for). The grantee is the setting es.grant_role (see grant_common.sql).
DO $$
DECLARE
    grantee text := current_setting('es.grant_role');
BEGIN
    EXECUTE format('GRANT SELECT, INSERT ON es_events, es_event_types TO %I', grantee);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON es_snapshots TO %I', grantee);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON es_idempotency_keys, es_unique_claims TO %I', grantee);
    EXECUTE format('GRANT SELECT ON es_projections TO %I', grantee);
END
$$
