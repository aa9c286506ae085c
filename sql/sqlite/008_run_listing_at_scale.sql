-- MaxQ schema, version 8 (SQLite): GET /runs with a million runs.
--
-- Each filter of GET /runs (flowName, status) has an index in each sort
-- order (createdAt, startedAt, completedAt), so a page is a walk of one
-- index in the order asked, never a scan of the sort index that filters
-- (SQLite cannot tell how rare a status is: status=running sorted by
-- completedAt walked every finished run first, 650 ms at 1,000,000 runs)
-- nor a sort of every match.  Both filters together walk one index too.

CREATE INDEX runs_by_flow_started ON runs (flow_name, started_at, id);
CREATE INDEX runs_by_flow_completed ON runs (flow_name, completed_at, id);
CREATE INDEX runs_by_status_started ON runs (status, started_at, id);
CREATE INDEX runs_by_status_completed ON runs (status, completed_at, id);
CREATE INDEX runs_by_flow_status ON runs (flow_name, status, created_at, id);

-- Past 1,000 matching runs the total is estimated from the runs with the
-- lowest ids (random UUIDs: a fair sample), read from this index alone.
CREATE INDEX runs_sample ON runs (id, flow_name, status);
