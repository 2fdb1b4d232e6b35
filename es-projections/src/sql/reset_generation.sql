-- Zeroes a generation's checkpoint, ledger, last verification and dead letters for a rebuild
-- from scratch and marks it rebuilding; fenced by the rebuild's lease. Run in the transaction
-- that empties its tables; the generation is now built by version $5 of the projector.
WITH reset AS (
    UPDATE es_projections
    SET watermark = 0, holes = '[]', events_applied = 0, last_event_at = NULL, last_error = NULL,
        last_error_at = NULL, ledger_from = 0, ledger_watermark = 0, last_verified_at = NULL,
        last_verified_ok = NULL, last_verify_report = NULL, state = 'rebuilding',
        code_version = $5,
        updated_at = clock_timestamp()
    WHERE name = $1 AND generation = $2 AND epoch = $3 AND owner = $4
    RETURNING name
), forgotten AS (
    DELETE FROM es_applied_ranges
    WHERE projection = $1 AND generation = $2 AND EXISTS (SELECT 1 FROM reset)
), unparked AS (
    -- The replay meets every event again: a bad one is parked again (or stops the rebuild).
    DELETE FROM es_dead_letters
    WHERE projection = $1 AND generation = $2 AND EXISTS (SELECT 1 FROM reset)
)
SELECT count(*) FROM reset
