-- MaxQ schema, version 7 (SQLite): the notification outbox and SLA marks.
--
-- A delivery is written in the transaction that ends its run (or finds its
-- SLA missed), so a crash loses none; a dispatcher on any server sends it,
-- holding a lease while it does.  Secrets are never stored: only the NAME
-- of the environment variable that holds the signing secret.

CREATE TABLE notifications (
    id               TEXT PRIMARY KEY,   -- the webhook-id, the same on every attempt
    run_id           TEXT NOT NULL REFERENCES runs (id),
    url              TEXT NOT NULL,
    type             TEXT NOT NULL,      -- run.completed, run.failed, run.sla_missed
    secret_env       TEXT,
    payload          TEXT NOT NULL,      -- the JSON body, sent alike every time
    status           TEXT NOT NULL,      -- pending, delivered, failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_status_code INTEGER,
    last_error       TEXT,
    next_attempt_at  INTEGER,
    delivered_at     INTEGER,
    lease_owner      TEXT,
    lease_until      INTEGER,
    created_at       INTEGER NOT NULL
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_by_run ON notifications (run_id, created_at);

CREATE TABLE notification_attempts (
    notification_id TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    attempted_at    INTEGER NOT NULL,
    status_code     INTEGER,
    error           TEXT,
    worker_id       TEXT,
    PRIMARY KEY (notification_id, attempt)
);

-- When the run was found past its flow's sla (once per run).
ALTER TABLE runs ADD COLUMN sla_missed_at INTEGER;
