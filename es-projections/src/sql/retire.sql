-- Retires the old live generation at the switch; its holder's next batch finds no row.
UPDATE es_projections
SET role = 'retired', epoch = epoch + 1, owner = NULL, lease_expires_at = NULL,
    updated_at = clock_timestamp()
WHERE name = $1 AND generation = $2 AND role = 'live'
