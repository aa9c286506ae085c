"""
Crash recovery, graceful stop and database retries on a deterministic clock
with a fake runner: a "crash" is a scheduler that stops dead, without
writing anything, and a new engine and scheduler on the same database.
"""

import pytest

from maxq.engine import MAX_INTERRUPTIONS, Engine
from maxq.errors import Refusal, StoreUnavailable
from maxq.drain import RECORD_DEADLINE_S
from maxq.scheduler import SchedulerService
from tests.fakes import FakeRunner, resolved
from tests.fakes import World
from tests.fakes import step


class FakeLeftovers:
    def __init__(self):
        self.calls = []

    async def terminate(self, items):
        self.calls.append(sorted(items, key=lambda i: (i[0], i[1] or "")))
        return len(items)


def crash(world):
    """
    The server dies: its scheduler stops dead (nothing is written), and a
    new engine and scheduler start on the same database, after recovery.
    Returns the recovery's counts.
    """
    old = world.scheduler
    old.kill()
    world.leftovers = FakeLeftovers()
    world.engine = Engine(world.store, world.engine.flows, world.config, world.clock,
                          leftovers=world.leftovers)
    world.runner = FakeRunner(world.clock)
    found = resolved(world.engine.recover_interrupted(None, "server_restart"))
    world.scheduler = SchedulerService(world.engine, world.runner, world.engine.flows,
                                       world.config, world.clock,
                                       base_env={"PATH": "/bin"})
    world.scheduler.startService()
    world.settle()
    return found


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.stop()


def _db(world, sql, *params):
    return world.store.conn.execute(sql, params).fetchall()


def test_crash_requeues_running_steps_without_spending_a_retry(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("done"), step("long", maxRetries=0),
                            step("after", ["long"])])
    world.runner.flows()[0].exit(0)
    world.settle()
    world.runner.by_step("done")[0].exit(0)
    world.settle()
    resolved(world.engine.post_fields(run_id, "long", {"fields": {"half": 1}}))

    found = crash(world)

    assert found == {"steps": 1, "failed": 0, "flowCalls": 0, "processGroups": 1}
    assert world.leftovers.calls == [[(run_id, "long", None)]]
    (again,) = world.runner.by_step("long")
    assert again.env["MAXQ_ATTEMPT"] == "1", "no retry was spent"
    assert world.runner.by_step("done") == [], "a completed step never runs again"
    long = world.step(run_id, "long")
    assert (long["status"], long["retry_count"], long["interruptions"]) == \
        ("running", 0, 1)
    assert long["fields"] == {"half": 1}, "posted fields are kept"
    again.exit(0)
    world.settle()
    world.runner.by_step("after")[0].exit(0)
    world.settle()
    assert world.run_status(run_id) == "completed"


def test_crash_redelivers_an_interrupted_flow_callback(world):
    run_id = world.trigger()
    first = world.runner.flows()[0]
    world.schedule(run_id, [step("a")], final=False)
    world.settle()

    found = crash(world)

    assert (found["flowCalls"], found["steps"]) == (1, 1)
    (again,) = world.runner.flows()
    assert again.env["MAXQ_COMPLETED_STAGE"] == ""
    assert first.env["MAXQ_RUN_ID"] == again.env["MAXQ_RUN_ID"]
    # The redelivered invocation posts the same stage again: a success with
    # the steps as they are, not STAGE_EXISTS.
    answer = world.schedule(run_id, [step("a")], final=False)
    assert answer["steps"] == [{"id": "a", "name": "x", "status": "running"}]
    # Anything else is still refused.
    with pytest.raises(Refusal) as e:
        world.schedule(run_id, [step("a"), step("b")], final=False)
    assert e.value.code == "STAGE_EXISTS"
    again.exit(0)
    world.runner.by_step("a")[0].exit(0)
    world.settle()
    (done,) = world.runner.flows()[1:]
    assert done.env["MAXQ_COMPLETED_STAGE"] == "s"
    done.exit(0)
    world.settle()
    assert world.run_status(run_id) == "completed"


def test_same_stage_posted_twice_by_one_uninterrupted_call_is_refused(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a")], final=False)
    with pytest.raises(Refusal) as e:
        world.schedule(run_id, [step("a")], final=False)
    assert e.value.code == "STAGE_EXISTS"


def test_third_interruption_fails_the_step_with_server_restart(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("poison", maxRetries=5), step("dep", ["poison"]),
                            step("other")], final=False)
    world.runner.flows()[0].exit(0)
    world.settle()
    world.runner.by_step("other")[0].exit(0)
    world.settle()
    for n in range(1, MAX_INTERRUPTIONS):
        found = crash(world)
        assert found["steps"] == 1
        assert world.step(run_id, "poison")["interruptions"] == n
    found = crash(world)
    assert (found["steps"], found["failed"]) == (0, 1)
    poison = world.step(run_id, "poison")
    assert poison["status"] == "failed"
    assert poison["error"] == {"reason": "server_restart"}
    assert poison["retry_count"] == 0
    assert world.step(run_id, "dep")["error"] == {"reason": "dependency_failed",
                                                  "failedStep": "poison"}
    # The normal failure rules: the stage failed and the flow is told.
    (flow,) = world.runner.flows()
    assert flow.env["MAXQ_FAILED_STAGE"] == "s"


def test_recovery_of_one_worker_leaves_the_others_alone(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a")])
    world.settle()
    world.store.conn.execute("UPDATE steps SET worker_id = 'elsewhere'")
    found = resolved(world.engine.recover_interrupted([world.config.worker_id],
                                                      "worker_lost"))
    assert found["steps"] == 0 and found["flowCalls"] == 1
    assert world.step(run_id, "a")["status"] == "running"
    found = resolved(world.engine.recover_interrupted(["elsewhere"], "worker_lost"))
    assert found["steps"] == 1


def test_nothing_to_recover(world):
    found = resolved(world.engine.recover_interrupted(None, "server_restart"))
    assert found == {"steps": 0, "failed": 0, "flowCalls": 0, "processGroups": 0}


# ------------------------------------------------------------ graceful stop


def _graceful_world(tmp_path, grace_ms):
    return World(tmp_path, shutdown_grace_ms=grace_ms)


def test_stop_lets_a_step_finish_within_the_grace(tmp_path):
    w = _graceful_world(tmp_path, 10000)
    try:
        run_id = w.trigger()
        w.schedule(run_id, [step("a")])
        w.runner.flows()[0].exit(0)
        w.settle()
        stopping = w.scheduler.stopService()
        w.clock.advance(5)
        assert not stopping.called
        a = w.runner.by_step("a")[0]
        assert a.terminated is None, "not terminated during the grace"
        a.exit(0)
        w.settle()
        assert stopping.called
        assert w.step(run_id, "a")["status"] == "completed"
        assert w.run_status(run_id) == "completed"
    finally:
        resolved(w.store.stop())


def test_stop_past_the_grace_requeues_without_counting(tmp_path):
    w = _graceful_world(tmp_path, 2000)
    try:
        run_id = w.trigger()
        w.schedule(run_id, [step("a")])
        w.settle()
        stopping = w.scheduler.stopService()
        w.clock.advance(1.9)
        assert not stopping.called
        w.clock.advance(0.2)
        assert w.runner.by_step("a")[0].terminated == "shutdown"
        resolved(stopping)  # the fake runner's processes end at once
        s = w.step(run_id, "a")
        assert (s["status"], s["retry_count"], s["interruptions"]) == ("pending", 0, 0)
        assert _db(w, "SELECT status FROM flow_calls") == [("pending",)]
    finally:
        resolved(w.store.stop())


def test_hurry_cuts_the_grace_short(tmp_path):
    w = _graceful_world(tmp_path, 60000)
    try:
        run_id = w.trigger()
        w.schedule(run_id, [step("a")])
        w.settle()
        stopping = w.scheduler.stopService()
        w.clock.advance(1)
        assert not stopping.called
        w.scheduler.hurry()
        resolved(stopping)
        assert w.runner.by_step("a")[0].terminated == "shutdown"
        assert w.step(run_id, "a")["status"] == "pending"
    finally:
        resolved(w.store.stop())


def test_nothing_is_claimed_during_the_grace(tmp_path):
    w = _graceful_world(tmp_path, 10000)
    try:
        run_id = w.trigger()
        w.schedule(run_id, [step("a"), step("b", ["a"])])
        w.settle()
        stopping = w.scheduler.stopService()
        w.runner.by_step("a")[0].exit(0)
        w.clock.advance(1)
        assert w.runner.by_step("b") == []
        assert w.step(run_id, "b")["status"] == "pending"
        w.scheduler.hurry()
        resolved(stopping)
    finally:
        resolved(w.store.stop())


# ------------------------------------------------------- database failures


def test_a_step_result_is_retried_while_the_database_is_busy(world):
    run_id = world.trigger()
    world.schedule(run_id, [step("a")])
    world.runner.flows()[0].exit(0)
    world.settle()
    real = world.engine.step_finished
    failures = []

    async def busy_three_times(*args):
        if len(failures) < 3:
            failures.append(world.clock.seconds())
            raise StoreUnavailable("database busy: database is locked")
        return await real(*args)

    world.engine.step_finished = busy_three_times
    world.runner.by_step("a")[0].exit(0)
    world.settle()
    assert world.step(run_id, "a")["status"] == "running"
    world.clock.advance(0.05)
    world.clock.advance(0.1)
    assert world.step(run_id, "a")["status"] == "running"
    world.clock.advance(0.2)
    assert len(failures) == 3
    assert world.step(run_id, "a")["status"] == "completed"
    assert world.run_status(run_id) == "completed"


def test_stop_gives_up_on_a_database_that_stays_busy(tmp_path):
    w = World(tmp_path, shutdown_grace_ms=0)
    try:
        run_id = w.trigger()
        w.schedule(run_id, [step("a")])
        w.settle()

        async def always_busy(*args):
            raise StoreUnavailable("database busy: database is locked")

        w.engine.requeue_step = always_busy
        w.engine.requeue_flow_call = always_busy
        stopping = w.scheduler.stopService()
        assert not stopping.called
        w.clock.advance(RECORD_DEADLINE_S + 0.1)
        resolved(stopping)
        # Left running in the database: the next start recovers it.
        assert w.step(run_id, "a")["status"] == "running"
    finally:
        resolved(w.store.stop())


def test_an_interrupted_step_keeps_its_place_in_the_queue(tmp_path):
    w = World(tmp_path, shutdown_grace_ms=0, max_concurrent_steps=1)
    try:
        run_id = w.trigger()
        w.schedule(run_id, [step("a"), step("b"), step("c")])
        w.runner.flows()[0].exit(0)
        w.settle()
        w.clock.advance(1)
        assert [h.env["MAXQ_STEP_ID"] for h in w.runner.spawned[1:]] == ["a"]
        crash(w)
        assert [h.env["MAXQ_STEP_ID"] for h in w.runner.spawned] == ["a"], \
            "the interrupted step runs first again, ahead of b and c"
    finally:
        w.stop()
