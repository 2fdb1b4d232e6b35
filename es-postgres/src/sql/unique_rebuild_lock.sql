-- Locks the claims table against claims and releases until the rebuild's transaction ends
-- (SHARE ROW EXCLUSIVE conflicts with the ROW EXCLUSIVE lock every INSERT and DELETE takes,
-- and with itself), waiting for the commits that hold it now to finish.
LOCK TABLE es_unique_claims IN SHARE ROW EXCLUSIVE MODE
