-- Extends a lease; no row when it was lost (fenced or taken over).
UPDATE es_projections SET lease_expires_at = clock_timestamp() + $5 * interval '1 millisecond'
WHERE name = $1 AND generation = $2 AND epoch = $3 AND owner = $4
