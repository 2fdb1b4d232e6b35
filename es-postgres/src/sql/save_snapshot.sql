-- Keeps only the latest snapshot; a snapshot of another state version always replaces the old one.
INSERT INTO es_snapshots AS s (stream_id, aggregate_type, stream_version, state_version, state, taken_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (stream_id, aggregate_type) DO UPDATE
SET stream_version = excluded.stream_version,
    state_version = excluded.state_version,
    state = excluded.state,
    taken_at = excluded.taken_at
WHERE s.stream_version < excluded.stream_version OR s.state_version <> excluded.state_version
