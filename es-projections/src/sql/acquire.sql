-- Takes the lease of the generation of role $5 ('live', or a built 'shadow' or 'retired' one
-- kept caught up beside it) if it is free, expired, or already ours, bumping the epoch (the fence
-- of every later checkpoint write). Only a generation built for this code ($6, the projector's
-- version; NULL for consumers, which have no generations to build) is taken. A failed generation
-- is taken (and set running again) only when $4; one being rebuilt is left to its rebuild.
UPDATE es_projections
SET owner = $2, epoch = epoch + 1, state = 'running',
    lease_expires_at = clock_timestamp() + $3 * interval '1 millisecond', updated_at = clock_timestamp()
WHERE name = $1 AND role = $5
  AND ($6::integer IS NULL OR code_version = $6)
  AND (state = 'running' OR (state = 'failed' AND $4))
  AND (owner IS NULL OR owner = $2 OR lease_expires_at < clock_timestamp())
RETURNING name, generation, epoch, watermark, holes, state, code_version
