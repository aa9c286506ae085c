-- MaxQ schema, version 3 (SQLite): GET /runs filtered by flow or status and
-- sorted by creation walks one index, the id tie-break included (the
-- PostgreSQL migration of the same number rebuilds its indexes to match).

DROP INDEX runs_by_flow;
DROP INDEX runs_by_status;
CREATE INDEX runs_by_flow ON runs (flow_name, created_at, id);
CREATE INDEX runs_by_status ON runs (status, created_at, id);
