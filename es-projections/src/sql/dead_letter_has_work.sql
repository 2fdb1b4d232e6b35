-- Whether the lease holder has dead-letter work: an operator's request, or a held letter with
-- no open failed letter before it in its stream (it waited only for that one).
SELECT EXISTS (
    SELECT 1 FROM es_dead_letters d
    WHERE d.projection = $1 AND d.generation = $2 AND d.state = 'open'
      AND (d.requested IS NOT NULL
           OR (d.cause = 'held' AND NOT EXISTS (
                  SELECT 1 FROM es_dead_letters f
                  WHERE f.projection = d.projection AND f.generation = d.generation
                    AND f.stream_id = d.stream_id AND f.state = 'open' AND f.cause = 'failed'
                    AND f.stream_version < d.stream_version)))
)
