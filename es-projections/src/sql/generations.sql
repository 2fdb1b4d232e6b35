-- Every generation of a projection (live, shadow, retired), as the blue/green commands see them.
SELECT generation, role, state, code_version, watermark, events_applied,
       CASE WHEN lease_expires_at > clock_timestamp() THEN owner END AS owner
FROM es_projections WHERE name = $1
ORDER BY generation
