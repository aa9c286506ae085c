"""
The scheduler and the engine's state transitions, on a deterministic clock
with a fake runner: no processes, no sleeps.
"""


from maxq.scheduler import GROUPS_DELAY_S
from tests.fakes import World, resolved, step


def test_trigger_starts_flow_at_once_without_waiting_for_the_interval(world):
    run_id = world.trigger()
    (flow,) = world.runner.flows()
    assert flow.env["MAXQ_RUN_ID"] == run_id
    assert flow.env["MAXQ_COMPLETED_STAGE"] == ""
    assert "MAXQ_FAILED_STAGE" not in flow.env
    assert world.run_status(run_id) == "running"


def test_dependent_step_starts_on_the_same_tick_as_its_dependency_ends(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a"), step("b", ["a"])])
    world.settle()
    assert [h.env["MAXQ_STEP_ID"] for h in world.runner.spawned[1:]] == ["a"]
    world.runner.by_step("a")[0].exit(0)
    world.settle()
    assert len(world.runner.by_step("b")) == 1, "no interval wait between a and b"


def test_flow_exit_with_final_stage_done_completes_run(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a")])
    world.runner.flows()[0].exit(0)
    world.settle()
    world.runner.by_step("a")[0].exit(0)
    world.settle()
    assert world.run_status(run_id) == "completed"
    assert len(world.runner.flows()) == 1, "flow is not called after the final stage"


def test_concurrency_limit(tmp_path):
    w = World(tmp_path, max_concurrent_steps=2)
    try:
        run_id = w.trigger()
        w.schedule(run_id, [step(f"s{i}") for i in range(5)])
        w.settle()
        assert len(w.runner.running) == 3  # the flow plus two steps
        w.runner.by_step("s0")[0].exit(0)
        w.settle()
        assert [h.env["MAXQ_STEP_ID"] for h in w.runner.spawned[1:]] == ["s0", "s1", "s2"]
    finally:
        w.stop()


def test_retry_waits_for_backoff_delay_on_the_clock(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a", maxRetries=2, retryDelayMs=1000, retryBackoff=3)])
    world.settle()
    world.runner.by_step("a")[0].exit(1)
    world.settle()
    world.clock.advance(0.999)
    assert len(world.runner.by_step("a")) == 1
    world.clock.advance(0.002)
    second = world.runner.by_step("a")
    assert len(second) == 2 and second[1].env["MAXQ_ATTEMPT"] == "2"
    second[1].exit(1)
    world.settle()
    world.clock.advance(2.9)
    assert len(world.runner.by_step("a")) == 2, "second delay is 1000 * 3"
    world.clock.advance(0.2)
    assert len(world.runner.by_step("a")) == 3
    world.runner.by_step("a")[2].exit(0)
    world.settle()
    s = world.step(run_id, "a")
    assert (s["status"], s["retry_count"]) == ("completed", 2)


def test_failure_cascade_and_fail_fast(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a"), step("b", ["a"]), step("c", ["b"]),
                            step("d", ["x"]), step("x")], final=False)
    world.runner.flows()[0].exit(0)
    world.settle()
    world.runner.by_step("x")[0].exit(0)
    world.settle()
    # d now runs; a fails for good.
    world.runner.by_step("a")[0].exit(7)
    world.settle()
    assert world.step(run_id, "b")["error"] == {"reason": "dependency_failed",
                                               "failedStep": "a"}
    assert world.step(run_id, "c")["status"] == "failed"
    assert world.step(run_id, "d")["status"] == "running", "running steps finish"
    world.runner.by_step("d")[0].exit(0)
    world.settle()
    flows = world.runner.flows()
    assert len(flows) == 2
    assert flows[1].env["MAXQ_FAILED_STAGE"] == "s"
    assert flows[1].env["MAXQ_COMPLETED_STAGE"] == ""
    flows[1].exit(0)  # schedules no recovery
    world.settle()
    run = resolved(world.engine.get_run(run_id))
    assert run["status"] == "failed"
    assert run["error"] == {"reason": "stage_failed", "stage": "s"}


def test_fail_fast_cancels_pending_siblings(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a"), step("b", ["z"]), step("z")], final=True)
    world.settle()
    world.runner.by_step("a")[0].exit(1)
    world.settle()
    b = world.step(run_id, "b")
    assert (b["status"], b["error"]) == ("cancelled", {"reason": "cancelled",
                                                       "failedStep": "a"})
    assert world.step(run_id, "z")["status"] == "running", "running steps finish"
    world.runner.by_step("z")[0].exit(0)
    world.settle()
    assert world.step(run_id, "z")["status"] == "completed"


def test_flow_failure_fails_run_and_terminates_steps(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a"), step("b", ["a"])])
    world.settle()
    world.runner.flows()[0].exit(3)
    world.settle()
    run = resolved(world.engine.get_run(run_id))
    assert run["error"] == {"reason": "flow_failed", "exitCode": 3}
    assert world.runner.by_step("a")[0].terminated == "flow_failed"
    assert world.step(run_id, "b")["status"] == "cancelled"


def test_pause_terminates_and_requeues_without_spending_a_retry(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a", maxRetries=0)])
    world.settle()
    first = world.runner.by_step("a")[0]
    resolved(world.engine.pause(run_id))
    assert first.terminated == "paused"
    first.exit(None, signal=15)
    world.clock.advance(1)
    assert len(world.runner.by_step("a")) == 1, "nothing is claimed while paused"
    assert world.step(run_id, "a")["status"] == "pending"
    resolved(world.engine.resume(run_id))
    world.settle()
    second = world.runner.by_step("a")
    assert len(second) == 2 and second[1].env["MAXQ_ATTEMPT"] == "1"
    second[1].exit(0)
    world.settle()
    assert world.step(run_id, "a")["status"] == "completed"


def test_late_exit_of_a_paused_attempt_does_not_touch_the_new_attempt(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a")])
    world.settle()
    old = world.runner.by_step("a")[0]
    resolved(world.engine.pause(run_id))
    resolved(world.engine.resume(run_id))
    world.settle()
    new = world.runner.by_step("a")[1]
    old.exit(1)  # the old process dies only now
    world.settle()
    assert world.step(run_id, "a")["status"] == "running"
    new.exit(0)
    world.settle()
    assert world.step(run_id, "a")["status"] == "completed"


def test_abort_fails_everything_and_kills_processes(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a"), step("b", ["a"])])
    world.settle()
    outcome = resolved(world.engine.abort(run_id))
    assert outcome["processesKilled"] == 2  # the flow and step a
    assert outcome["alreadyCompleted"] is False
    for sid in ("a", "b"):
        s = world.step(run_id, sid)
        assert (s["status"], s["termination_reason"]) == ("failed", "aborted")
    again = resolved(world.engine.abort(run_id))
    assert again["alreadyCompleted"] is True and again["processesKilled"] == 0


def test_shutdown_requeues_running_step_without_spending_a_retry(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a")])
    world.settle()
    resolved(world.scheduler.stopService())
    s = world.step(run_id, "a")
    # A graceful stop is not counted as an interruption (only crashes are).
    assert (s["status"], s["retry_count"], s["interruptions"]) == ("pending", 0, 0)


def test_retried_flow_call_may_post_its_stage_again_while_it_runs(world):
    run_id = world.trigger()
    body = [step("c1"), step("w1")]
    world.schedule(run_id, body, stage="one", final=False)
    world.settle()
    world.runner.by_step("c1")[0].exit(0)
    world.runner.flows()[0].exit(1)  # the first call fails: flow_failed
    world.settle()
    assert world.run_status(run_id) == "failed"
    resolved(world.engine.retry_run(run_id))
    world.settle()
    assert len(world.runner.flows()) == 2, "the failed call is delivered again"
    # w1 runs again; the redelivered call posts stage one again meanwhile.
    again = world.schedule(run_id, body, stage="one", final=False)
    assert {s["id"]: s["status"] for s in again["steps"]} == {"c1": "completed",
                                                               "w1": "running"}
    world.runner.flows()[1].exit(0)
    world.runner.by_step("w1")[-1].exit(0)
    world.settle()
    assert len(world.runner.by_step("c1")) == 1, "c1 is not run again"


def test_process_groups_are_recorded_once_shortly_after_start(world):
    run_id = world.trigger()
    (flow,) = world.runner.flows()
    world.schedule(run_id, [step("quick"), step("slow")])
    world.settle()
    (quick,) = world.runner.by_step("quick")
    (slow,) = world.runner.by_step("slow")
    assert world.step(run_id, "slow")["pgid"] is None
    quick.exit(0)
    world.clock.advance(GROUPS_DELAY_S)
    # Only what still runs is written: a step that ended first costs nothing.
    assert world.step(run_id, "slow")["pgid"] == slow.pid
    assert world.step(run_id, "quick")["pgid"] is None
    calls = resolved(world.store.read(lambda tx: tx.open_flow_calls(run_id)))
    assert [c["pgid"] for c in calls] == [flow.pid]
    # Recorded once: a later pass does not write it again.
    world.store.conn.execute("UPDATE steps SET pgid = 1 WHERE id = 'slow'")
    world.schedule(run_id, [step("later")], stage="t")
    world.settle()
    world.clock.advance(GROUPS_DELAY_S)
    assert world.step(run_id, "slow")["pgid"] == 1
    (later,) = world.runner.by_step("later")
    assert world.step(run_id, "later")["pgid"] == later.pid
