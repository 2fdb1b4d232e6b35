-- A stream's version: its highest stream_version (NULL: no events). A backward scan of the
-- unique index (stream_id, stream_version).
SELECT max(stream_version) FROM es_events WHERE stream_id = $1
