-- Takes an idempotency key for this transaction ($1 key, $2 fingerprint). Returns a row when
-- the key was free. When another transaction holds the key uncommitted, the insert waits for it
-- (a unique index check waits for an in-progress inserter) and then returns no row if it
-- committed, or takes the key if it rolled back.
INSERT INTO es_idempotency_keys (key, fingerprint)
VALUES ($1, $2)
ON CONFLICT (key) DO NOTHING
RETURNING true AS taken
