-- Up to $1 rows of {left} that {right} does not have (as many times: duplicates count), in text
-- form; both are physical names validated by Tables::new with the same columns.
SELECT row FROM (
    SELECT t::text AS row FROM {left} t
    EXCEPT ALL
    SELECT t::text FROM {right} t
) only_left
ORDER BY row
LIMIT $1
