-- Consumers beside projections (reactors, process managers, publishers: es-projections,
-- consumer.rs), and dead letters an operator can act on.

-- What each checkpoint row belongs to: status shows it, and a reactor is never rebuilt (a
-- replay would repeat its effects).
ALTER TABLE es_projections
    ADD COLUMN kind text NOT NULL DEFAULT 'projection'
        CHECK (kind IN ('projection', 'reactor', 'publisher'));

-- A dead letter is open until it is retried with success or skipped; never deleted by an
-- operator action, so the record of what was done stays.
--   cause: failed (the event itself failed), held (parked only because an earlier event of its
--          stream is open: per-stream order is kept, so it waits and is retried after it).
--   requested: an operator's request, carried out by the process holding the lease.
ALTER TABLE es_dead_letters
    ADD COLUMN cause            text        NOT NULL DEFAULT 'failed' CHECK (cause IN ('failed', 'held')),
    ADD COLUMN attempts         integer     NOT NULL DEFAULT 1,
    ADD COLUMN state            text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'retried', 'skipped')),
    ADD COLUMN requested        text        CHECK (requested IN ('retry', 'skip')),
    ADD COLUMN requested_by     text,
    ADD COLUMN requested_at     timestamptz,
    ADD COLUMN reason           text,
    ADD COLUMN resolved_at      timestamptz,
    ADD COLUMN resolved_by      text;

-- The open letters of a consumer, by stream in stream order: what blocks a stream, and the
-- order in which retries go.
CREATE INDEX es_dead_letters_open ON es_dead_letters (projection, generation, stream_id, stream_version)
    WHERE state = 'open';

-- Letters parked before this migration were parked under the old rule: the later events of
-- their streams were applied around them. Open, they would now hold their streams (and a retry
-- would apply them after their successors): close them, kept for the record.
UPDATE es_dead_letters
SET state = 'skipped', resolved_at = now(), resolved_by = 'migration 0007',
    reason = 'parked before migration 0007, when the later events of its stream were applied around it'
WHERE state = 'open';
