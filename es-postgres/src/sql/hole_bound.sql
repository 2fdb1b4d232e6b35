-- The bound for holes found by the read just before, in the same transaction: a transaction id
-- assigned now, after that read's snapshot was taken. Transaction ids are handed out in
-- increasing order, so it is greater than the id of every transaction that could own a hole.
-- The caller runs this only when the read reported that its transaction held no id yet:
-- otherwise pg_current_xact_id() would return that older id.
SELECT pg_current_xact_id()::text::bigint
