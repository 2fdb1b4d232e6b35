-- Gives a lease up (a standby takes over at once), optionally setting the state ($5).
UPDATE es_projections
SET owner = NULL, lease_expires_at = NULL, state = coalesce($5, state), updated_at = clock_timestamp()
WHERE name = $1 AND generation = $2 AND epoch = $3 AND owner = $4
