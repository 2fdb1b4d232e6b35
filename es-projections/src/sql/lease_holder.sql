-- Who holds the lease of a generation ($2: its role), until when, and how many seconds are left.
SELECT owner, lease_expires_at,
       greatest(extract(epoch FROM lease_expires_at - clock_timestamp()), 0)::float8 AS seconds_left
FROM es_projections WHERE name = $1 AND role = $2
