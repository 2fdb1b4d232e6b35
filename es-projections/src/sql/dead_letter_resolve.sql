-- Closes an open dead letter: $2 'retried' (applied with success) or 'skipped' (by an
-- operator's request, whose reason stays in `reason`). $3: the process that carried it out.
UPDATE es_dead_letters
SET state = $2, requested = NULL, resolved_at = clock_timestamp(), resolved_by = $3
WHERE id = $1 AND state = 'open'
