-- The event log. One row per event, never updated or deleted.
--
-- transaction_id is declared BEFORE global_position on purpose: column defaults are evaluated
-- in column order, so pg_current_xact_id() assigns the writer's transaction id before the
-- identity default takes a position. A gap-aware reader relies on this: every position is
-- taken by a transaction whose id was already assigned, so once the snapshot horizon (xmin)
-- passes the xmax seen when a hole was found, the hole can never fill.
CREATE TABLE es_events (
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    global_position bigint      GENERATED ALWAYS AS IDENTITY (CACHE 1),
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL CHECK (length(stream_id) BETWEEN 1 AND 255),
    stream_version  bigint      NOT NULL CHECK (stream_version >= 1),
    event_type      text        NOT NULL CHECK (length(event_type) BETWEEN 1 AND 255),
    schema_version  integer     NOT NULL CHECK (schema_version >= 1),
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT es_events_pkey PRIMARY KEY (global_position),
    -- Optimistic concurrency: the store maps a violation of exactly this constraint to Conflict.
    CONSTRAINT es_events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT es_events_event_id_key UNIQUE (event_id)
);

COMMENT ON TABLE es_events IS 'Append-only event log (es-postgres). UPDATE, DELETE and TRUNCATE are refused.';

-- Events are immutable: refuse UPDATE, DELETE and TRUNCATE at the database.
CREATE FUNCTION es_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'es_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER es_events_immutable_rows
    BEFORE UPDATE OR DELETE ON es_events
    FOR EACH ROW EXECUTE FUNCTION es_events_refuse_change();

CREATE TRIGGER es_events_immutable_table
    BEFORE TRUNCATE ON es_events
    FOR EACH STATEMENT EXECUTE FUNCTION es_events_refuse_change();
