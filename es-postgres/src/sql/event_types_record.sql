-- Records (event type, schema version) pairs ($1 types, $2 versions) not recorded yet.
INSERT INTO es_event_types (event_type, schema_version)
SELECT p.event_type, p.schema_version
FROM unnest($1::text[], $2::int[]) AS p(event_type, schema_version)
WHERE NOT EXISTS (SELECT 1 FROM es_event_types t
                  WHERE t.event_type = p.event_type AND t.schema_version = p.schema_version)
