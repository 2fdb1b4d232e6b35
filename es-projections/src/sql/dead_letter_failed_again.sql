-- A retry of an open dead letter failed: it is now the failed letter its stream waits behind,
-- with the new error. Retry requests on its stream are dropped (they would wait behind it);
-- skips stay (a skip need not wait).
WITH again AS (
    UPDATE es_dead_letters
    SET error = $2, attempts = attempts + $3, cause = 'failed', requested = NULL
    WHERE id = $1 AND state = 'open'
    RETURNING projection, generation, stream_id
)
UPDATE es_dead_letters d SET requested = NULL
FROM again a
WHERE d.projection = a.projection AND d.generation = a.generation AND d.stream_id = a.stream_id
  AND d.state = 'open' AND d.id <> $1 AND d.requested = 'retry'
