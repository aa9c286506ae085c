-- MaxQ schema, version 2 (PostgreSQL): redelivering an interrupted flow
-- callback (see sql/sqlite/002_redelivery.sql).

ALTER TABLE stages ADD COLUMN flow_call_id BIGINT;
ALTER TABLE stages ADD COLUMN flow_call_interrupted INTEGER NOT NULL DEFAULT 0;
