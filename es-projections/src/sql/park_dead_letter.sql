-- Parks an event a projection generation could not decode or apply (dead-letter policy only).
INSERT INTO es_dead_letters
    (projection, generation, global_position, stream_id, stream_version, event_type,
     schema_version, error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT DO NOTHING
