-- Records why a lease holder stopped and releases the lease. $6: the state to leave ('failed'
-- for a worker, which other workers then leave alone; 'rebuilding' for a rebuild, which the same
-- command resumes).
UPDATE es_projections
SET state = $6, last_error = $5, last_error_at = clock_timestamp(), owner = NULL,
    lease_expires_at = NULL, updated_at = clock_timestamp()
WHERE name = $1 AND generation = $2 AND epoch = $3 AND owner = $4
