-- MaxQ schema, version 2 (SQLite): redelivering an interrupted flow callback.
--
-- A flow callback cut short by a crash or a shutdown is delivered again.  If
-- its interrupted invocation had already scheduled a stage, the new
-- invocation will post that stage again: the stage remembers which flow call
-- scheduled it, and that call's interruption, so the repeated post is
-- answered as a success instead of STAGE_EXISTS.

-- The flow call during whose invocation the stage was (last) scheduled.
ALTER TABLE stages ADD COLUMN flow_call_id INTEGER;
-- 1 once that invocation was interrupted and its callback requeued.
ALTER TABLE stages ADD COLUMN flow_call_interrupted INTEGER NOT NULL DEFAULT 0;
