-- Keeps only the latest snapshot: a newer state version wins, then a higher stream version. A late
-- write from older code (lower state version) never replaces a newer snapshot.
INSERT INTO es_snapshots AS s (stream_id, aggregate_type, stream_version, state_version, state, taken_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (stream_id, aggregate_type) DO UPDATE
SET stream_version = excluded.stream_version,
    state_version = excluded.state_version,
    state = excluded.state,
    taken_at = excluded.taken_at
WHERE s.state_version < excluded.state_version
   OR (s.state_version = excluded.state_version AND s.stream_version < excluded.stream_version)
