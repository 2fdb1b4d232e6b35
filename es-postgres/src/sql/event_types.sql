-- Every (event type, schema version) the log holds (kept by the trigger of migration 0006).
SELECT DISTINCT event_type, schema_version FROM es_event_types ORDER BY 1, 2
