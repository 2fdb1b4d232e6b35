-- Records the pairs of every stored event (one pass over the log), for events written outside
-- the store.
INSERT INTO es_event_types (event_type, schema_version)
SELECT DISTINCT e.event_type, e.schema_version
FROM es_events e
WHERE NOT EXISTS (SELECT 1 FROM es_event_types t
                  WHERE t.event_type = e.event_type AND t.schema_version = e.schema_version)
