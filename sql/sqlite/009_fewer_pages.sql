-- MaxQ schema, version 9 (SQLite): fewer pages written per commit (every
-- page a commit changes is one more WAL frame).

-- Only steps of a pool are counted by pool: a step without one no longer
-- enters (and leaves) this index each time it starts and ends.
DROP INDEX steps_running_pool;
CREATE INDEX steps_running_pool ON steps (pool) WHERE status = 'running' AND pool IS NOT NULL;

-- Events without AUTOINCREMENT, whose sqlite_sequence row was one more
-- page per commit.  Ids are still never reused: the store gives each new
-- event an id above both the highest kept and the highest pruned
-- (SqliteTransaction.insert_events), and an emptied table's last id moves
-- into the horizon here.
CREATE TABLE events_kept (
    id              INTEGER PRIMARY KEY,
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
INSERT INTO events_kept SELECT id, type, at, run_id, flow_name, stage, step_id, status,
    previous_status, data FROM events;
UPDATE event_horizon SET pruned_through = max(pruned_through, coalesce(
    (SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))
    WHERE NOT EXISTS (SELECT 1 FROM events);
DROP TABLE events;
ALTER TABLE events_kept RENAME TO events;
CREATE INDEX events_by_run ON events (run_id, id);
