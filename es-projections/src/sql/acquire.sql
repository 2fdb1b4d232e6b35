-- Takes the live generation's lease if it is free, expired, or already ours, bumping the epoch
-- (the fence of every later checkpoint write). A failed projection is taken (and set running
-- again) only when $4; a projection being rebuilt is left to its rebuild.
UPDATE es_projections
SET owner = $2, epoch = epoch + 1, state = 'running',
    lease_expires_at = clock_timestamp() + $3 * interval '1 millisecond', updated_at = clock_timestamp()
WHERE name = $1 AND role = 'live'
  AND (state = 'running' OR (state = 'failed' AND $4))
  AND (owner IS NULL OR owner = $2 OR lease_expires_at < clock_timestamp())
RETURNING name, generation, epoch, watermark, holes, state
