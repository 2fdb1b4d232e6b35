-- The reader (queries of the read model): SELECT on the tables and views that the projector
-- role named by es.grant_projector owns now, and, through default privileges, on those it
-- creates later (a view is created again when its columns change or a shadow generation is
-- switched in). A view is read with its owner's privileges on the tables under it, so the
-- reader needs nothing on them; it is given SELECT on the generation tables too, as they are
-- created by the same role. The grantee is the setting es.grant_role (see grant_common.sql).
DO $$
DECLARE
    grantee text := current_setting('es.grant_role');
    projector text := current_setting('es.grant_projector');
    relation record;
BEGIN
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES TO %I',
                   projector, current_schema(), grantee);
    FOR relation IN
        SELECT c.relname FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm')
          AND c.relowner = (SELECT r.oid FROM pg_roles r WHERE r.rolname = projector)
    LOOP
        EXECUTE format('GRANT SELECT ON %I TO %I', relation.relname, grantee);
    END LOOP;
END
$$
