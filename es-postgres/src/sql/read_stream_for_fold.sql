-- A stream's events as a repository folds them: no event id, stream id (the caller knows it),
-- metadata or time. Each column left out is one less value the server converts and sends per
-- row. The same rows, in the same order, as read_stream.sql.
SELECT global_position, stream_version, event_type, schema_version, payload
FROM es_events
WHERE stream_id = $1 AND stream_version > $2 AND stream_version <= $3
ORDER BY stream_version
