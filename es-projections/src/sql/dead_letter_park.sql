-- Parks an event a projection or consumer generation could not decode or apply ($9 cause
-- 'failed'), or one held behind an open letter of its stream ($9 'held'). Parking an event
-- again (a consumer's batch delivered twice) keeps the first row.
INSERT INTO es_dead_letters
    (projection, generation, global_position, stream_id, stream_version, event_type,
     schema_version, error, cause, attempts)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT DO NOTHING
