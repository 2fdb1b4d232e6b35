-- Frees one key whose retention has passed ($2 seconds) before it is taken again.
DELETE FROM es_idempotency_keys
WHERE key = $1 AND created_at <= clock_timestamp() - make_interval(secs => $2)
