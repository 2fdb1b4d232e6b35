-- Every (event type, schema version) the log holds (recorded by the store, event_types.rs).
SELECT DISTINCT event_type, schema_version FROM es_event_types ORDER BY 1, 2
