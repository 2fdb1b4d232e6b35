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
-- at start-up that it can read them all (event_types.rs). Written by the store in the
-- transaction of the first append of a pair it has not recorded yet (each process remembers
-- the pairs it has seen, so appends of known pairs pay nothing), and by
-- `PgEventStore::record_event_types` for events written outside the store. Deliberately no
-- unique constraint: two writers recording the same new pair at once never wait for each other
-- (a unique index would make the second wait for the first's commit); the duplicate row is
-- harmless, as readers ask for DISTINCT pairs.
CREATE TABLE es_event_types (
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    first_seen_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX es_event_types_pair ON es_event_types (event_type, schema_version);

-- The pairs of the events already stored.
INSERT INTO es_event_types (event_type, schema_version)
SELECT DISTINCT event_type, schema_version FROM es_events;
