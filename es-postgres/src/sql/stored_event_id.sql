-- Which of these event ids ($1) is stored, if any: to name a duplicate.
SELECT event_id FROM es_events WHERE event_id = ANY($1) LIMIT 1
