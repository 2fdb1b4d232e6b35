-- The ledger `verify` checks a projection against: which positions each projection generation
-- was delivered, as maximal runs of consecutive positions, written in the same transaction as
-- the batch and its checkpoint (es-projections, checkpoint.rs). A committed event at or below
-- the checkpoint that is in no range and in no hole was skipped.
CREATE TABLE es_applied_ranges (
    projection     text    NOT NULL,
    generation     integer NOT NULL,
    first_position bigint  NOT NULL,
    last_position  bigint  NOT NULL CHECK (last_position >= first_position),
    PRIMARY KEY (projection, generation, first_position)
);

-- A batch extends the range that ends right before its first position.
CREATE UNIQUE INDEX es_applied_ranges_last ON es_applied_ranges (projection, generation, last_position);

-- Positions at or below ledger_from were applied before the ledger existed (or before this
-- migration): verify can say nothing about them; a rebuild starts the ledger at 0.
-- ledger_watermark is the watermark as of the last batch that wrote the ledger: when a batch
-- finds the watermark elsewhere, a binary that writes no ledger (an older version, during a
-- rolling upgrade) applied the batches in between, and ledger_from moves up to there.
ALTER TABLE es_projections
    ADD COLUMN ledger_from        bigint NOT NULL DEFAULT 0,
    ADD COLUMN ledger_watermark   bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_verified_at   timestamptz,
    ADD COLUMN last_verified_ok   boolean,
    ADD COLUMN last_verify_report text;

UPDATE es_projections SET ledger_from = watermark, ledger_watermark = watermark;
