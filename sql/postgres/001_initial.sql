-- MaxQ schema, version 1 (PostgreSQL).  The same tables as sql/sqlite,
-- with an explicit insertion-order column for steps (SQLite's rowid) and a
-- registry of the servers sharing the database.
-- Times are epoch milliseconds; JSON values are stored as TEXT, exactly as
-- on SQLite, so both backends share their statements.

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
    created_at         BIGINT NOT NULL,
    started_at         BIGINT,
    completed_at       BIGINT
);
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
    created_at   BIGINT NOT NULL,
    completed_at BIGINT,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE steps (
    run_id             TEXT NOT NULL REFERENCES runs (id),
    id                 TEXT NOT NULL,
    seq                BIGINT GENERATED ALWAYS AS IDENTITY,
    stage              TEXT NOT NULL,
    name               TEXT NOT NULL,
    status             TEXT NOT NULL,
    depends_on         TEXT NOT NULL,
    deps_left          INTEGER NOT NULL,
    max_retries        INTEGER NOT NULL,
    retry_count        INTEGER NOT NULL DEFAULT 0,
    retry_delay_ms     BIGINT NOT NULL DEFAULT 0,
    retry_backoff      DOUBLE PRECISION NOT NULL DEFAULT 2.0,
    timeout_seconds    DOUBLE PRECISION,
    env                TEXT NOT NULL,
    fields             TEXT NOT NULL DEFAULT '{}',
    error              TEXT,
    exit_code          INTEGER,
    created_at         BIGINT NOT NULL,
    queued_at          BIGINT,
    started_at         BIGINT,
    completed_at       BIGINT,
    duration_ms        BIGINT,
    ready_at           BIGINT NOT NULL DEFAULT 0,
    stdout             TEXT,
    stderr             TEXT,
    worker_id          TEXT,
    termination_reason TEXT,
    claim_no           INTEGER NOT NULL DEFAULT 0,
    interruptions      INTEGER NOT NULL DEFAULT 0,
    pgid               INTEGER,
    PRIMARY KEY (run_id, id)
);
CREATE INDEX steps_claimable ON steps (ready_at, seq) WHERE status = 'pending' AND deps_left = 0;
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

CREATE TABLE flow_calls (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           TEXT NOT NULL REFERENCES runs (id),
    completed_stage  TEXT,
    failed_stage     TEXT,
    status           TEXT NOT NULL,
    scheduled_stages INTEGER NOT NULL DEFAULT 0,
    exit_code        INTEGER,
    worker_id        TEXT,
    pgid             INTEGER,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    completed_at     BIGINT
);
CREATE INDEX flow_calls_open ON flow_calls (run_id, id) WHERE status IN ('pending', 'running');
CREATE INDEX flow_calls_pending ON flow_calls (id) WHERE status = 'pending';
CREATE INDEX flow_calls_running ON flow_calls (worker_id) WHERE status = 'running';

CREATE TABLE logs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs (id),
    entity_type TEXT NOT NULL,
    entity_id   TEXT,
    level       TEXT NOT NULL,
    message     TEXT NOT NULL,
    metadata    TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX logs_by_run ON logs (run_id, id);

-- The servers sharing this database, and when each last proved it is alive.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
