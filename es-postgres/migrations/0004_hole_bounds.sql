-- Holes in projection cursors were bounded by their snapshot's xmax, which is not a sound bound
-- (see es-postgres/src/log_reader.rs). Replace each stored bound by "none yet": the next read by
-- a worker gives such holes a sound one (a transaction id assigned after that read's snapshot).
-- Events already lost under the old bound predate the ledger that `verify` checks (0005): a
-- rebuild (`rebuild NAME --shadow`) gives a complete read model whatever the old one missed.
-- The comments of 0001 and 0003 describe the old bound; applied migrations cannot change.
UPDATE es_projections
SET holes = (SELECT coalesce(jsonb_agg(jsonb_build_object('start', h -> 'start', 'end', h -> 'end',
                                                           'bound', NULL)
                                       ORDER BY (h ->> 'start')::bigint), '[]'::jsonb)
             FROM jsonb_array_elements(holes) AS h)
WHERE holes <> '[]'::jsonb;

COMMENT ON COLUMN es_projections.holes IS
    'Positions below the watermark not yet visible: [{"start", "end", "bound"}], see es-postgres log_reader.';
