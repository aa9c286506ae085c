-- MaxQ schema, version 9 (PostgreSQL): fewer index entries written per
-- step.  Only steps of a pool are counted by pool: a step without one no
-- longer enters this index each time it starts.  (Event ids stay an
-- identity; readers stop at a settled bound, see maxq/streams.py.)
DROP INDEX steps_running_pool;
CREATE INDEX steps_running_pool ON steps (pool) WHERE status = 'running' AND pool IS NOT NULL;
