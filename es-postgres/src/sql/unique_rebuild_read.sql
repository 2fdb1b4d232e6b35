-- The whole log for a rebuild of unique claims: every stream's events in stream order, with the
-- transaction that wrote each (a commit's changes are applied together: releases, then claims).
-- The row's first nine columns are those of read_all.sql.
SELECT global_position, event_id, stream_id, stream_version, event_type, schema_version,
       payload, metadata, recorded_at, transaction_id::text
FROM es_events
ORDER BY stream_id, stream_version
