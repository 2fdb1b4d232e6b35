-- Records the outcome of the commit that took the key, in the same transaction.
UPDATE es_idempotency_keys SET outcome = $2 WHERE key = $1
