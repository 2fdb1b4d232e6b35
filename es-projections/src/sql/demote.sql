-- Turns the live generation into the role $3 at a switch ('retired', kept for a rollback) or a
-- rollback ('shadow', so that `switch` goes forward again); its holder's next batch finds no row.
UPDATE es_projections
SET role = $3, epoch = epoch + 1, owner = NULL, lease_expires_at = NULL,
    updated_at = clock_timestamp()
WHERE name = $1 AND generation = $2 AND role = 'live'
