-- Projection checkpoints and leases: one row per projection generation. The live generation is
-- the one readers see (through views); a shadow generation is being built beside it.
CREATE TABLE es_projections (
    name             text        NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    generation       integer     NOT NULL DEFAULT 1 CHECK (generation >= 1),
    -- live: serving reads; shadow: being built beside the live one; retired: replaced.
    role             text        NOT NULL DEFAULT 'live' CHECK (role IN ('live', 'shadow', 'retired')),
    -- running: follows the log; rebuilding: replaying after a reset; failed: stopped on an error.
    state            text        NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'rebuilding', 'failed')),
    -- Every event at or below the watermark has been applied, except the holes.
    watermark        bigint      NOT NULL DEFAULT 0,
    -- Positions below the watermark not yet visible: [{"start", "end", "xmax"}], see log_reader.
    holes            jsonb       NOT NULL DEFAULT '[]'::jsonb,
    events_applied   bigint      NOT NULL DEFAULT 0,
    last_event_at    timestamptz,
    -- The lease: who applies this generation, fenced by epoch.
    epoch            bigint      NOT NULL DEFAULT 0,
    owner            text,
    lease_expires_at timestamptz,
    last_error       text,
    last_error_at    timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, generation)
);

CREATE UNIQUE INDEX es_projections_one_live ON es_projections (name) WHERE role = 'live';
CREATE UNIQUE INDEX es_projections_one_shadow ON es_projections (name) WHERE role = 'shadow';

-- Events a projection could not apply, parked under the dead-letter policy (never the default).
CREATE TABLE es_dead_letters (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection      text        NOT NULL,
    generation      integer     NOT NULL,
    global_position bigint      NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    error           text        NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (projection, generation, global_position)
);
