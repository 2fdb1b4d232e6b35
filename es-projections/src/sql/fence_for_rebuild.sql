-- Takes the live generation's lease for an in-place rebuild, in a transaction of its own. The
-- epoch bump fences out a live worker: a batch holding the row (hold.sql) is waited for and
-- commits first; any later batch finds no row and rolls back. Refused (no row) while another
-- rebuild's lease is current.
UPDATE es_projections
SET owner = $2, epoch = epoch + 1,
    lease_expires_at = clock_timestamp() + $3 * interval '1 millisecond', updated_at = clock_timestamp()
WHERE name = $1 AND role = 'live'
  AND (state <> 'rebuilding' OR owner IS NULL OR owner = $2 OR lease_expires_at < clock_timestamp())
RETURNING name, generation, epoch, watermark, holes, state
