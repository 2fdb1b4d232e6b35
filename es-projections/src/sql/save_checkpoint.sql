-- Stores the cursor after a batch, fenced by the lease, and records the positions delivered in
-- the ledger (es_applied_ranges) that `verify` checks; in the batch's transaction.
--   $1 name, $2 generation, $3 epoch, $4 owner: the lease; $5 watermark, $6 holes: the cursor;
--   $7 events applied, $8 newest event's time, $9 lease length (ms);
--   $10, $11 first and last positions of the runs of consecutive positions delivered.
-- The ledger writes read `fenced`, so they happen after the row is updated, and only when it was.
WITH fenced AS (
    UPDATE es_projections
    SET watermark = $5, holes = $6, events_applied = events_applied + $7,
        -- A watermark moved since the last ledger write was moved by a binary that writes no
        -- ledger: what it applied cannot be judged (the right-hand sides read the old row).
        ledger_from = CASE WHEN ledger_watermark = watermark THEN ledger_from ELSE watermark END,
        ledger_watermark = $5,
        last_event_at = coalesce($8, last_event_at),
        lease_expires_at = clock_timestamp() + $9 * interval '1 millisecond',
        updated_at = clock_timestamp()
    WHERE name = $1 AND generation = $2 AND epoch = $3 AND owner = $4
    RETURNING name
), ranges AS (
    SELECT r.first_position, r.last_position
    FROM fenced, unnest($10::bigint[], $11::bigint[]) AS r(first_position, last_position)
), extended AS (
    -- A run that starts right after a recorded one extends it.
    UPDATE es_applied_ranges a SET last_position = r.last_position
    FROM ranges r
    WHERE a.projection = $1 AND a.generation = $2 AND a.last_position = r.first_position - 1
    RETURNING r.first_position
), recorded AS (
    INSERT INTO es_applied_ranges (projection, generation, first_position, last_position)
    SELECT $1, $2, r.first_position, r.last_position FROM ranges r
    WHERE r.first_position NOT IN (SELECT first_position FROM extended)
)
SELECT count(*) FROM fenced
