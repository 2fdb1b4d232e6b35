-- The monitor (an operator's `status` and `verify`): reads the events and the framework's
-- bookkeeping, and may write nothing but the result of a verification (the three columns
-- `verify` records, so that `status` shows it). The grantee is the setting es.grant_role
-- (see grant_common.sql).
DO $$
DECLARE
    grantee text := current_setting('es.grant_role');
BEGIN
    EXECUTE format('GRANT SELECT ON es_events, es_event_types, es_projections, es_applied_ranges, es_dead_letters TO %I', grantee);
    EXECUTE format('GRANT UPDATE (last_verified_at, last_verified_ok, last_verify_report) ON es_projections TO %I', grantee);
END
$$
