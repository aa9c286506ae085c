-- MaxQ schema, version 3 (PostgreSQL): indexes that serve GET /runs in the
-- order MaxQ sorts on every backend, NULL times lowest (SQLite's order):
-- ascending with NULLs first, descending (a backward scan) with NULLs last.
-- With PostgreSQL's default NULLS LAST indexes the planner sorted the
-- whole table instead (36 ms at 100,000 runs, against 0.05 ms).

DROP INDEX runs_by_created;
DROP INDEX runs_by_started;
DROP INDEX runs_by_completed;
CREATE INDEX runs_by_created ON runs (created_at NULLS FIRST, id);
CREATE INDEX runs_by_started ON runs (started_at NULLS FIRST, id);
CREATE INDEX runs_by_completed ON runs (completed_at NULLS FIRST, id);
DROP INDEX runs_by_flow;
DROP INDEX runs_by_status;
CREATE INDEX runs_by_flow ON runs (flow_name, created_at NULLS FIRST, id);
CREATE INDEX runs_by_status ON runs (status, created_at NULLS FIRST, id);
