-- Takes the shadow generation's lease if it is free, expired, or ours.
UPDATE es_projections
SET owner = $2, epoch = epoch + 1,
    lease_expires_at = clock_timestamp() + $3 * interval '1 millisecond', updated_at = clock_timestamp()
WHERE name = $1 AND role = 'shadow'
  AND (owner IS NULL OR owner = $2 OR lease_expires_at < clock_timestamp())
RETURNING name, generation, epoch, watermark, holes, state, events_applied
