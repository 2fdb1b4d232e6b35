-- The fence at the start of a batch, after its read: locks the row if the lease is still ours.
-- Held until the batch commits, so nobody can bump the epoch (a rebuild, a switch, a takeover)
-- while the batch applies: it either commits under our lease or finds no row here.
SELECT 1 FROM es_projections
WHERE name = $1 AND generation = $2 AND epoch = $3 AND owner = $4
FOR UPDATE
