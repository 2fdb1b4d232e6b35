-- The fingerprint and outcome stored under a key, unless the key is older than the retention
-- ($2 seconds), which makes it free again (a prune removes it).
SELECT fingerprint, outcome
FROM es_idempotency_keys
WHERE key = $1 AND created_at > clock_timestamp() - make_interval(secs => $2)
