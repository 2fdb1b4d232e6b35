-- Blue/green deployments (es-projections, generations.rs): each projection generation records the
-- version of the projector code that builds it (`Projector::VERSION`), and a worker applies only
-- generations of its own version. So old and new binaries can run at once in any order: each
-- keeps its own generation caught up and neither writes the other's. Generations built before
-- this migration were built by version 1, every projector's default.
ALTER TABLE es_projections
    ADD COLUMN code_version integer NOT NULL DEFAULT 1 CHECK (code_version >= 1);
