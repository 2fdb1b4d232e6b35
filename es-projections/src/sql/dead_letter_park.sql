-- Parks an event a projection or consumer generation could not decode or apply ($9 cause
-- 'failed'), or one held behind an open letter of its stream ($9 'held'), in the transaction of
-- the batch's checkpoint. A position is parked once per generation: a second time would be a
-- bug, and fails on the unique key rather than hide a closed letter.
INSERT INTO es_dead_letters
    (projection, generation, global_position, stream_id, stream_version, event_type,
     schema_version, error, cause, attempts)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
