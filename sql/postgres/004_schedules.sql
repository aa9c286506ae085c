-- MaxQ schema, version 4 (PostgreSQL): schedules and backfills (SPEC §5).

-- How a run was made (api, schedule, backfill) and, for schedule and
-- backfill runs, the fire time it is for.
ALTER TABLE runs ADD COLUMN trigger TEXT NOT NULL DEFAULT 'api';
ALTER TABLE runs ADD COLUMN scheduled_at BIGINT;
ALTER TABLE runs ADD COLUMN backfill_id TEXT;
-- Why a run made by a schedule or a backfill waits, unstarted and without
-- a flow call: 'overlap' (queued behind earlier scheduled runs of its flow)
-- or 'backfill' (its backfill has maxActiveRuns running).  NULL otherwise.
ALTER TABLE runs ADD COLUMN held TEXT;
-- One scheduled run per fire time, whatever the servers and restarts.
CREATE UNIQUE INDEX runs_one_per_fire ON runs (flow_name, scheduled_at)
    WHERE trigger = 'schedule';
CREATE INDEX runs_by_fire ON runs (flow_name, scheduled_at) WHERE scheduled_at IS NOT NULL;
CREATE INDEX runs_by_backfill ON runs (backfill_id, scheduled_at) WHERE backfill_id IS NOT NULL;

-- A flow's schedule state, shared by every server: paused, and up to which
-- fire time it has been handled (watermark).
CREATE TABLE schedules (
    flow_name   TEXT PRIMARY KEY,
    paused      INTEGER NOT NULL,
    watermark   BIGINT NOT NULL,
    last_at     BIGINT,
    last_run_id TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- What each schedule did: every fire time that made a run, was skipped (and
-- why), and pauses, resumes and backfills.
CREATE TABLE schedule_log (
    id           BIGSERIAL PRIMARY KEY,
    flow_name    TEXT NOT NULL,
    action       TEXT NOT NULL,
    scheduled_at BIGINT,
    reason       TEXT,
    run_id       TEXT,
    details      TEXT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX schedule_log_by_flow ON schedule_log (flow_name, id);

CREATE TABLE backfills (
    id          TEXT PRIMARY KEY,
    flow_name   TEXT NOT NULL,
    from_at     BIGINT NOT NULL,
    to_at       BIGINT NOT NULL,
    status      TEXT NOT NULL,
    reprocess   TEXT NOT NULL,
    max_active  INTEGER NOT NULL,
    input       TEXT,
    skipped     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    completed_at BIGINT
);
CREATE INDEX backfills_by_flow ON backfills (flow_name, created_at);
