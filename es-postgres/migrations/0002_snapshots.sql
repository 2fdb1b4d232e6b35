-- The latest snapshot of each stream, per aggregate type.
CREATE TABLE es_snapshots (
    stream_id      text        NOT NULL,
    aggregate_type text        NOT NULL,
    stream_version bigint      NOT NULL,
    state_version  integer     NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, aggregate_type)
);
