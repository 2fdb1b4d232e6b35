-- Names the role a grant_*.sql file grants to ($1: es.grant_role) or reads for
-- ($1: es.grant_projector), for the rest of the granting transaction.
SELECT set_config($1, $2, true)
