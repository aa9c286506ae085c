-- MaxQ schema, version 6 (PostgreSQL): the event history, stored output and
-- full-text search (SPEC §7).

-- Every change of state, written in the transaction that made it.  Ids are
-- drawn under a transaction-level advisory lock held until commit (see
-- PostgresTransaction.insert_events), so they grow in commit order across
-- servers: a reader that saw id n never later finds a smaller one.
CREATE TABLE events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type            TEXT NOT NULL,
    at              BIGINT NOT NULL,
    run_id          TEXT,
    flow_name       TEXT,
    stage           TEXT,
    step_id         TEXT,
    status          TEXT,
    previous_status TEXT,
    data            TEXT NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, id);
CREATE TABLE event_horizon (pruned_through BIGINT NOT NULL);
INSERT INTO event_horizon VALUES (0);

CREATE TABLE outputs (
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    stream     TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    claim_no   BIGINT NOT NULL,
    size       BIGINT NOT NULL DEFAULT 0,
    truncated  INTEGER NOT NULL DEFAULT 0,
    complete   INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step_id, stream, claim_no)
);
CREATE TABLE output_chunks (
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    stream     TEXT NOT NULL,
    claim_no   BIGINT NOT NULL,
    "offset"   BIGINT NOT NULL,
    size       BIGINT NOT NULL,
    data       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step_id, stream, claim_no, "offset")
);

-- Full-text search with the 'simple' configuration (no stemming, no stop
-- words): the same words match as in SQLite's FTS5 unicode61 tokenizer.
CREATE INDEX logs_fts ON logs USING GIN (to_tsvector('simple', message));
CREATE INDEX output_fts ON output_chunks USING GIN (to_tsvector('simple', data));
