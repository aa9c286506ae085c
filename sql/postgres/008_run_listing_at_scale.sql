-- MaxQ schema, version 8 (PostgreSQL): GET /runs with a million runs.
--
-- Each filter of GET /runs (flowName, status) has an index in each sort
-- order (createdAt, startedAt, completedAt), NULL times lowest as in
-- migration 3, so a page is a walk of one index in the order asked; both
-- filters together walk one index too (the planner otherwise fetched every
-- run of the flow to keep those of the status).

CREATE INDEX runs_by_flow_started ON runs (flow_name, started_at NULLS FIRST, id);
CREATE INDEX runs_by_flow_completed ON runs (flow_name, completed_at NULLS FIRST, id);
CREATE INDEX runs_by_status_started ON runs (status, started_at NULLS FIRST, id);
CREATE INDEX runs_by_status_completed ON runs (status, completed_at NULLS FIRST, id);
CREATE INDEX runs_by_flow_status ON runs (flow_name, status, created_at NULLS FIRST, id);

-- Past 1,000 matching runs the total is estimated from the runs with the
-- lowest ids (random UUIDs: a fair sample), read from this index alone.
CREATE INDEX runs_sample ON runs (id, flow_name, status);
