-- The head of the log: the highest position of a visible event (0 when there is none).
SELECT coalesce(max(global_position), 0) FROM es_events
