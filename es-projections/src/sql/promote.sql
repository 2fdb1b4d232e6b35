-- Makes the leased generation of role $5 ('shadow' at a switch, 'retired' at a rollback) live,
-- fenced by the command's lease; workers take it from here.
UPDATE es_projections
SET role = 'live', state = 'running', epoch = epoch + 1, owner = NULL, lease_expires_at = NULL,
    updated_at = clock_timestamp()
WHERE name = $1 AND generation = $2 AND epoch = $3 AND owner = $4 AND role = $5
