SELECT stream_version, state_version, state, taken_at
FROM es_snapshots
WHERE stream_id = $1 AND aggregate_type = $2
