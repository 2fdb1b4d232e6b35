-- Records a verification's result on the generation it checked (shown by `status`).
UPDATE es_projections
SET last_verified_at = clock_timestamp(), last_verified_ok = $3, last_verify_report = $4
WHERE name = $1 AND generation = $2
