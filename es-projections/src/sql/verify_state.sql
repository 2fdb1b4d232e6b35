-- What verify checks a live generation against: its checkpoint, and where its ledger starts.
SELECT generation, watermark, holes, ledger_from FROM es_projections WHERE name = $1 AND role = 'live'
