-- MaxQ schema, version 5 (SQLite): flow control (SPEC §6).
--
-- Limits are counted from the steps and runs themselves (what is running),
-- never kept in counters, so a lost server's slots come back with its work.

ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- Why a pending run waits (JSON), NULL when it does not.
ALTER TABLE runs ADD COLUMN wait_reason TEXT;

ALTER TABLE steps ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE steps ADD COLUMN pool TEXT;
ALTER TABLE steps ADD COLUMN pool_slots INTEGER NOT NULL DEFAULT 1;
-- JSON array of the labels a server must have to claim the step.
ALTER TABLE steps ADD COLUMN requires TEXT;
-- The stage request's maxParallel, kept on each of its steps.
ALTER TABLE steps ADD COLUMN max_parallel INTEGER;
ALTER TABLE steps ADD COLUMN continue_on_failure INTEGER NOT NULL DEFAULT 0;
ALTER TABLE steps ADD COLUMN allowed_failure INTEGER NOT NULL DEFAULT 0;
-- JSON object: env name -> "STEP_ID.FIELD..." or "input.KEY...".
ALTER TABLE steps ADD COLUMN inputs TEXT;
ALTER TABLE steps ADD COLUMN wait_reason TEXT;
-- 1 when a limit may hold the step back (pool, requires, maxParallel or a
-- limit of its flow): such steps are claimed by the limited claim; NULL
-- steps by the plain one, which never counts anything.
ALTER TABLE steps ADD COLUMN gate INTEGER;

-- The claim order: priority, then age (ready_at), then insertion.
DROP INDEX steps_claimable;
CREATE INDEX steps_claimable ON steps (priority DESC, ready_at)
    WHERE status = 'pending' AND deps_left = 0 AND gate IS NULL;
CREATE INDEX steps_gated ON steps (priority DESC, ready_at)
    WHERE status = 'pending' AND deps_left = 0 AND gate IS NOT NULL;
-- Counting what runs in a pool.
-- Whether limited steps wait at all, runnable or not (the limited claim's hint).
CREATE INDEX steps_gated_pending ON steps (run_id) WHERE status = 'pending' AND gate IS NOT NULL;
CREATE INDEX steps_running_pool ON steps (pool) WHERE status = 'running';

CREATE TABLE pools (
    name  TEXT PRIMARY KEY,
    slots INTEGER NOT NULL
);

-- One row per limit ("runs/FLOW", "steps/FLOW"): what a claim locks on
-- PostgreSQL before counting; kept alike here.
CREATE TABLE limit_locks (
    name TEXT PRIMARY KEY
);
