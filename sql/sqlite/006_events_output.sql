-- MaxQ schema, version 6 (SQLite): the event history, stored output and
-- full-text search (SPEC §7).

-- Every change of state, written in the transaction that made it.  The
-- id only grows (AUTOINCREMENT: never reused, even after pruning emptied
-- the table); SQLite has one writer, so ids are in commit order.
CREATE TABLE events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    type            TEXT NOT NULL,
    at              INTEGER NOT NULL,
    run_id          TEXT,
    flow_name       TEXT,
    stage           TEXT,
    step_id         TEXT,
    status          TEXT,
    previous_status TEXT,
    data            TEXT NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, id);
-- The highest id pruning removed: a stream resumed from before it is reset.
CREATE TABLE event_horizon (pruned_through INTEGER NOT NULL);
INSERT INTO event_horizon VALUES (0);

-- One stream (stdout or stderr) of one attempt of a step (step_id) or of
-- one flow.sh call (step_id '', claim_no = the call's id).
CREATE TABLE outputs (
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    stream     TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    claim_no   INTEGER NOT NULL,
    size       INTEGER NOT NULL DEFAULT 0,
    truncated  INTEGER NOT NULL DEFAULT 0,
    complete   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, step_id, stream, claim_no)
);
-- The stored (masked, UTF-8) bytes, as they arrived; "offset" counts bytes.
CREATE TABLE output_chunks (
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    stream     TEXT NOT NULL,
    claim_no   INTEGER NOT NULL,
    "offset"   INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, step_id, stream, claim_no, "offset")
);

-- Full-text indexes over log messages and output, kept by triggers.
CREATE VIRTUAL TABLE logs_fts USING fts5(message, content='logs', content_rowid='id');
CREATE TRIGGER logs_fts_insert AFTER INSERT ON logs BEGIN
    INSERT INTO logs_fts (rowid, message) VALUES (new.id, new.message);
END;
CREATE TRIGGER logs_fts_delete AFTER DELETE ON logs BEGIN
    INSERT INTO logs_fts (logs_fts, rowid, message) VALUES ('delete', old.id, old.message);
END;
CREATE VIRTUAL TABLE output_fts USING fts5(data, content='output_chunks', content_rowid='rowid');
CREATE TRIGGER output_fts_insert AFTER INSERT ON output_chunks BEGIN
    INSERT INTO output_fts (rowid, data) VALUES (new.rowid, new.data);
END;
CREATE TRIGGER output_fts_delete AFTER DELETE ON output_chunks BEGIN
    INSERT INTO output_fts (output_fts, rowid, data) VALUES ('delete', old.rowid, old.data);
END;
