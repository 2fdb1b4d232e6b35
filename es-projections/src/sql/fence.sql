-- Takes the lease of the generation of role $4 for an operator's command (an in-place rebuild, a
-- switch, a rollback, dropping a generation), in a transaction of its own. The epoch bump fences
-- out the worker applying it: a batch holding the row (hold.sql) is waited for and commits first;
-- any later batch finds no row and rolls back. Refused (no row) while another rebuild's lease is
-- current: a rebuild is never fenced out by a command, it is waited for.
UPDATE es_projections
SET owner = $2, epoch = epoch + 1,
    lease_expires_at = clock_timestamp() + $3 * interval '1 millisecond', updated_at = clock_timestamp()
WHERE name = $1 AND role = $4
  AND (state <> 'rebuilding' OR owner IS NULL OR owner = $2 OR lease_expires_at < clock_timestamp())
RETURNING name, generation, epoch, watermark, holes, state, code_version
