-- Removes keys older than the retention ($1 seconds), a bounded number at a time ($2), oldest
-- first, so that a prune never holds many locks.
DELETE FROM es_idempotency_keys
WHERE key IN (SELECT key FROM es_idempotency_keys
              WHERE created_at <= clock_timestamp() - make_interval(secs => $1)
              ORDER BY created_at
              LIMIT $2)
