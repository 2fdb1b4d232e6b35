-- Row count and an order-independent checksum of a generation's table ({table}: a physical name
-- validated by Tables::new). Each row is hashed in its text form, so that columns without an
-- equality operator (json) compare too.
SELECT count(*) AS row_count,
       to_hex((coalesce(sum(hashtextextended(t::text, 0)), 0) % 9223372036854775807)::bigint) AS checksum
FROM {table} t
