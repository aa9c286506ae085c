-- MaxQ schema, version 1 (SQLite).
-- Times are epoch milliseconds; JSON values are stored as TEXT.

CREATE TABLE runs (
    id                 TEXT PRIMARY KEY,
    flow_name          TEXT NOT NULL,
    status             TEXT NOT NULL,
    name               TEXT,
    description        TEXT,
    input              TEXT,
    output             TEXT,
    error              TEXT,
    metadata           TEXT,
    stdout             TEXT NOT NULL DEFAULT '',
    stderr             TEXT NOT NULL DEFAULT '',
    termination_reason TEXT,
    idempotency_key    TEXT UNIQUE,
    created_at         INTEGER NOT NULL,
    started_at         INTEGER,
    completed_at       INTEGER
);
-- GET /runs sorts by one of three times, optionally filtered by flow or status.
CREATE INDEX runs_by_created ON runs (created_at, id);
CREATE INDEX runs_by_started ON runs (started_at, id);
CREATE INDEX runs_by_completed ON runs (completed_at, id);
CREATE INDEX runs_by_flow ON runs (flow_name, created_at);
CREATE INDEX runs_by_status ON runs (status, created_at);

CREATE TABLE stages (
    run_id       TEXT NOT NULL REFERENCES runs (id),
    name         TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    status       TEXT NOT NULL,
    final        INTEGER NOT NULL,
    fail_fast    INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    completed_at INTEGER,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE steps (
    run_id             TEXT NOT NULL REFERENCES runs (id),
    id                 TEXT NOT NULL,
    stage              TEXT NOT NULL,
    name               TEXT NOT NULL,
    status             TEXT NOT NULL,
    depends_on         TEXT NOT NULL,
    -- Dependencies not yet completed; a pending step is runnable at 0.
    deps_left          INTEGER NOT NULL,
    max_retries        INTEGER NOT NULL,
    retry_count        INTEGER NOT NULL DEFAULT 0,
    retry_delay_ms     INTEGER NOT NULL DEFAULT 0,
    retry_backoff      REAL NOT NULL DEFAULT 2.0,
    timeout_seconds    REAL,
    env                TEXT NOT NULL,
    fields             TEXT NOT NULL DEFAULT '{}',
    error              TEXT,
    exit_code          INTEGER,
    created_at         INTEGER NOT NULL,
    queued_at          INTEGER,
    started_at         INTEGER,
    completed_at       INTEGER,
    duration_ms        INTEGER,
    -- Not claimable before this time (retry backoff); steps are claimed in
    -- (ready_at, rowid) order, first come first served.
    ready_at           INTEGER NOT NULL DEFAULT 0,
    stdout             TEXT,
    stderr             TEXT,
    worker_id          TEXT,
    termination_reason TEXT,
    -- Bumped at every claim: a process's result is applied only to the
    -- attempt that started it (a paused-then-resumed step may have an older
    -- process still dying).
    claim_no           INTEGER NOT NULL DEFAULT 0,
    -- Attempts cut short by the server itself (restart, lost worker).
    interruptions      INTEGER NOT NULL DEFAULT 0,
    pgid               INTEGER,
    PRIMARY KEY (run_id, id)
);
CREATE INDEX steps_claimable ON steps (ready_at) WHERE status = 'pending' AND deps_left = 0;
CREATE INDEX steps_by_stage ON steps (run_id, stage, status);
CREATE INDEX steps_by_run ON steps (run_id, created_at);
CREATE INDEX steps_running ON steps (worker_id) WHERE status = 'running';

CREATE TABLE step_deps (
    run_id  TEXT NOT NULL,
    step_id TEXT NOT NULL,
    dep_id  TEXT NOT NULL,
    PRIMARY KEY (run_id, dep_id, step_id)
);
CREATE INDEX step_deps_by_step ON step_deps (run_id, step_id);

-- Every invocation of flow.sh, in order: at most one runs per run at a time.
CREATE TABLE flow_calls (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id           TEXT NOT NULL REFERENCES runs (id),
    completed_stage  TEXT,
    failed_stage     TEXT,
    status           TEXT NOT NULL,
    scheduled_stages INTEGER NOT NULL DEFAULT 0,
    exit_code        INTEGER,
    worker_id        TEXT,
    pgid             INTEGER,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    completed_at     INTEGER
);
CREATE INDEX flow_calls_open ON flow_calls (run_id, id) WHERE status IN ('pending', 'running');
CREATE INDEX flow_calls_pending ON flow_calls (id) WHERE status = 'pending';

CREATE TABLE logs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL REFERENCES runs (id),
    entity_type TEXT NOT NULL,
    entity_id   TEXT,
    level       TEXT NOT NULL,
    message     TEXT NOT NULL,
    metadata    TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX logs_by_run ON logs (run_id, id);
