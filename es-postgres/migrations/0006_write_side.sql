-- The write side beyond one stream (es-postgres, commit.rs and the modules it calls):
-- idempotency keys, unique values held by streams, and the record of every
-- (event type, schema version) the log holds.

-- A command's idempotency key, written in the same transaction as its events, with that
-- commit's outcome (one element per stream: stream, events, stream_version, global_position).
-- The primary key serialises racing executions of one command: the second waits for the
-- first's transaction and then finds the key (idempotency.rs). Kept for the store's retention.
CREATE TABLE es_idempotency_keys (
    key         text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint uuid        NOT NULL,
    outcome     jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT es_idempotency_keys_pkey PRIMARY KEY (key)
);
CREATE INDEX es_idempotency_keys_created_at ON es_idempotency_keys (created_at);

-- Unique values (an e-mail address in scope `user-email`) and the stream holding each, claimed
-- and released in the same transaction as the events that do so (uniques.rs). A table derived
-- from the log: `PgEventStore::rebuild_unique_claims` rewrites it from the events.
CREATE TABLE es_unique_claims (
    scope      text        NOT NULL CHECK (length(scope) BETWEEN 1 AND 255),
    value      text        NOT NULL CHECK (length(value) BETWEEN 1 AND 255),
    stream_id  text        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT es_unique_claims_pkey PRIMARY KEY (scope, value)
);
CREATE INDEX es_unique_claims_stream ON es_unique_claims (stream_id);

-- Every (event type, schema version) the log holds, so that a repository or worker can check
-- at start-up that it can read them all (event_types.rs). Kept by a statement-level trigger, so
-- that every way of inserting events (the store, group commit, a caller's transaction, a bulk
-- load in SQL) keeps it: per statement, one probe of this small table for each distinct pair,
-- and an insert only for a pair not seen before. Deliberately no unique constraint: two writers
-- that bring the same new pair at once then never wait for each other (a unique index would
-- make the second wait for the first's commit); the duplicate row is harmless, as readers ask
-- for DISTINCT pairs.
CREATE TABLE es_event_types (
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    first_seen_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX es_event_types_pair ON es_event_types (event_type, schema_version);

CREATE FUNCTION es_events_record_types() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO es_event_types (event_type, schema_version)
    SELECT DISTINCT n.event_type, n.schema_version
    FROM new_events n
    WHERE NOT EXISTS (SELECT 1 FROM es_event_types t
                      WHERE t.event_type = n.event_type AND t.schema_version = n.schema_version);
    RETURN NULL;
END;
$$;

CREATE TRIGGER es_events_record_types
    AFTER INSERT ON es_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION es_events_record_types();

INSERT INTO es_event_types (event_type, schema_version)
SELECT DISTINCT event_type, schema_version FROM es_events;
