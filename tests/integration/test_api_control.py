"""
SPEC §3: POST /runs/{runId}/abort, /retry, /pause, /resume and
POST /runs/{runId}/steps/{stepId}/retry.
"""

from __future__ import annotations

import shlex

from twisted.internet import defer

from .conftest import pids_alive
from .api_support import (
    API_SH,
    OK_SH,
    add_noop,
    assert_error,
    count_sh,
    flaky_sh,
    new_uuid,
    read_lines,
    settle,
    sh_quote_json,
    stage,
    staged_flow_sh,
    start_held,
    state_dir,
    step,
    wait_sh,
)


async def _all_dead(server, pids):
    await server.wait_for(lambda: defer.succeed(not pids_alive(pids)),
                          what=f"processes {pids} gone")


# -- abort -------------------------------------------------------------------

async def test_abort_running_run(maxq):
    server = await maxq.start()
    held = await start_held(server)
    # A second stage with a running step and a pending one behind it.
    status, body = await server.post(f"/runs/{held.run_id}/steps", stage("more", [
        step("w2", "wait"), step("after", dependsOn=["w2"])]))
    assert status == 201, body
    await server.wait_step(held.run_id, "w2", {"running"})
    await server.wait_for(lambda: defer.succeed(len(held.pids()) == 2),
                          what="both waiters started")

    status, body = await server.post(f"/runs/{held.run_id}/abort")
    assert status == 200, body
    assert isinstance(body["message"], str)
    assert body["alreadyCompleted"] is False
    assert isinstance(body["processesKilled"], int) and body["processesKilled"] >= 2

    run = await server.wait_run(held.run_id)
    assert run["status"] == "failed"
    assert run["terminationReason"] == "aborted"
    assert run["completedAt"] is not None
    for s in run["stages"]:
        assert s["status"] == "failed", s
    for sid in ("wait", "w2", "after"):
        status, s = await server.get(f"/runs/{held.run_id}/steps/{sid}")
        assert s["status"] == "failed", s
        assert s["terminationReason"] == "aborted", s
    await _all_dead(server, held.pids())

    # Idempotent: a second abort changes nothing and says so.
    status, body = await server.post(f"/runs/{held.run_id}/abort")
    assert status == 200, body
    assert body["alreadyCompleted"] is True
    assert body["processesKilled"] == 0
    status, again = await server.get(f"/runs/{held.run_id}")
    assert again["status"] == "failed" and again["terminationReason"] == "aborted"

    # Releasing now must not revive anything.
    held.release()
    await settle(server.reactor, 0.2)
    status, again = await server.get(f"/runs/{held.run_id}")
    assert again["status"] == "failed"


async def test_abort_kills_a_running_flow_script(maxq):
    server = await maxq.start()
    state = state_dir(server, "slowflow")
    pidfile = shlex.quote(str(state / "pids"))
    add_noop(server, "slowflow", f"""\
    echo $$ >> {pidfile}
    sleep 30 &
    echo $! >> {pidfile}
    wait
    """)
    run = await server.trigger("slowflow")
    await server.wait_for(lambda: defer.succeed(len(read_lines(state / "pids")) == 2),
                          what="flow started")
    status, body = await server.post(f"/runs/{run['id']}/abort")
    assert status == 200, body
    assert body["alreadyCompleted"] is False
    assert body["processesKilled"] >= 1
    run = await server.wait_run(run["id"])
    assert run["status"] == "failed"
    assert run["terminationReason"] == "aborted"
    await _all_dead(server, [int(p) for p in read_lines(state / "pids")])


async def test_abort_paused_run(maxq):
    server = await maxq.start()
    held = await start_held(server)
    status, body = await server.post(f"/runs/{held.run_id}/pause")
    assert status == 200, body
    await server.wait_step(held.run_id, "wait", {"pending"})
    status, body = await server.post(f"/runs/{held.run_id}/abort")
    assert status == 200, body
    assert body["alreadyCompleted"] is False
    run = await server.wait_run(held.run_id)
    assert run["status"] == "failed"
    assert run["terminationReason"] == "aborted"
    status, s = await server.get(f"/runs/{held.run_id}/steps/wait")
    assert s["status"] == "failed" and s["terminationReason"] == "aborted", s
    assert_error(await server.post(f"/runs/{held.run_id}/resume"), 409,
                 "RUN_NOT_PAUSED")


async def test_concurrent_aborts(maxq):
    server = await maxq.start()
    held = await start_held(server)
    results = await defer.gatherResults([
        defer.ensureDeferred(server.post(f"/runs/{held.run_id}/abort"))
        for _ in range(4)])
    assert [status for status, _ in results] == [200] * 4, results
    assert sorted(body["alreadyCompleted"] for _, body in results) == [
        False, True, True, True], results
    run = await server.wait_run(held.run_id)
    assert run["terminationReason"] == "aborted"


async def test_abort_completed_run(maxq):
    server = await maxq.start()
    add_noop(server)
    run = await server.trigger("noop")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed"
    status, body = await server.post(f"/runs/{run['id']}/abort")
    assert status == 200, body
    assert body["alreadyCompleted"] is True
    assert body["processesKilled"] == 0
    status, again = await server.get(f"/runs/{run['id']}")
    assert again["status"] == "completed"
    assert again["terminationReason"] is None
    assert again["completedAt"] == run["completedAt"]


async def test_abort_unknown_run(maxq):
    server = await maxq.start()
    assert_error(await server.post(f"/runs/{new_uuid()}/abort"), 404, "RUN_NOT_FOUND")


# -- run retry -----------------------------------------------------------------

def _add_retry_flow(server, flow="retrying"):
    """
    Stage one (count-1) then final stage two (flaky-1, failing until
    state/fixed exists).  On failure the flow schedules nothing.
    """
    state = state_dir(server, flow)
    server.flows.add(flow, staged_flow_sh({
        "": stage("one", [step("count-1", "count")]),
        "one": stage("two", [step("flaky-1", "flaky")], final=True),
    }), steps={"count": count_sh(state), "flaky": flaky_sh(state), "ok": OK_SH})
    return state


async def test_retry_failed_run(maxq):
    server = await maxq.start()
    state = _add_retry_flow(server)
    run = await server.trigger("retrying")
    run = await server.wait_run(run["id"])
    assert run["status"] == "failed", run
    assert run["error"] == {"reason": "stage_failed", "stage": "two"}
    assert read_lines(state / "count") == ["count-1"]

    (state / "fixed").touch()
    status, body = await server.post(f"/runs/{run['id']}/retry")
    assert status == 200, body
    assert isinstance(body["message"], str)
    assert body["run"]["id"] == run["id"]
    assert body["run"]["status"] in ("pending", "running")

    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    assert run["error"] is None
    # The completed stage was kept, not run again.
    assert read_lines(state / "count") == ["count-1"]
    assert read_lines(state / "flaky-attempts") == ["x", "x"]
    assert {s["name"]: s["status"] for s in run["stages"]} == {
        "one": "completed", "two": "completed"}
    status, s = await server.get(f"/runs/{run['id']}/steps/flaky-1")
    assert s["status"] == "completed"
    assert s["exitCode"] == 0

    # A completed run cannot be retried.
    assert_error(await server.post(f"/runs/{run['id']}/retry"), 400, "RUN_COMPLETED")
    status, again = await server.get(f"/runs/{run['id']}")
    assert again["status"] == "completed"


async def test_concurrent_retries(maxq):
    server = await maxq.start()
    state = _add_retry_flow(server)
    run = await server.trigger("retrying")
    await server.wait_run(run["id"])
    (state / "fixed").touch()
    results = await defer.gatherResults([
        defer.ensureDeferred(server.post(f"/runs/{run['id']}/retry"))
        for _ in range(4)])
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 1, results
    # The losers find the run active again, or, when the retried run was
    # quick enough to finish before they were served, completed.
    for status, body in results:
        if status == 409:
            assert_error((status, body), 409, "RUN_ACTIVE")
        elif status != 200:
            assert_error((status, body), 400, "RUN_COMPLETED")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    assert read_lines(state / "flaky-attempts") == ["x", "x"]


async def test_retry_aborted_run(maxq):
    server = await maxq.start()
    held = await start_held(server)
    status, body = await server.post(f"/runs/{held.run_id}/abort")
    assert status == 200, body
    await server.wait_run(held.run_id)
    await _all_dead(server, held.pids())
    held.release()
    status, body = await server.post(f"/runs/{held.run_id}/retry")
    assert status == 200, body
    run = await server.wait_run(held.run_id)
    assert run["status"] == "completed", run
    assert len(held.attempts()) == 2


async def test_retry_after_flow_failure(maxq):
    """
    The flow's first call schedules stage one, waits for c1 to complete and
    then fails.  After a retry the run continues; if the server calls the
    flow again, re-scheduling stage one reuses its records (c1 is not run
    again).
    """
    server = await maxq.start()
    state = state_dir(server, "flowfail")
    fixed = shlex.quote(str(state / "fixed"))
    flow = API_SH + f"""
if [ -z "${{MAXQ_COMPLETED_STAGE:-}}" ] && [ -z "${{MAXQ_FAILED_STAGE:-}}" ]; then
  post_stage {sh_quote_json(stage("one", [step("c1", "count"), step("w1", "wait")]))}
  until api "$MAXQ_API/runs/$MAXQ_RUN_ID/steps/c1" | grep -q '"status": *"completed"'; do
    sleep 0.02
  done
  [ -f {fixed} ] || exit 1
fi
exit 0
"""
    server.flows.add("flowfail", flow, steps={"count": count_sh(state),
                                              "wait": wait_sh(state)})
    run = await server.trigger("flowfail")
    run = await server.wait_run(run["id"])
    assert run["status"] == "failed", run
    assert run["error"] == {"reason": "flow_failed", "exitCode": 1}, run
    await _all_dead(server, [int(p) for p in read_lines(state / "pids")])
    status, w1 = await server.get(f"/runs/{run['id']}/steps/w1")
    assert w1["status"] in ("failed", "cancelled"), w1

    (state / "fixed").touch()
    (state / "release").touch()
    status, body = await server.post(f"/runs/{run['id']}/retry")
    assert status == 200, body
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    assert read_lines(state / "count") == ["c1"]
    for sid in ("c1", "w1"):
        status, s = await server.get(f"/runs/{run['id']}/steps/{sid}")
        assert s["status"] == "completed", s
    assert [s["name"] for s in run["stages"]] == ["one"]


async def test_retry_active_run(maxq):
    server = await maxq.start()
    held = await start_held(server)
    assert_error(await server.post(f"/runs/{held.run_id}/retry"), 409, "RUN_ACTIVE")
    status, body = await server.post(f"/runs/{held.run_id}/pause")
    assert status == 200, body
    assert_error(await server.post(f"/runs/{held.run_id}/retry"), 409, "RUN_ACTIVE")
    status, run = await server.get(f"/runs/{held.run_id}")
    assert run["status"] == "paused"
    status, body = await server.post(f"/runs/{held.run_id}/resume")
    assert status == 200, body
    run = await held.finish()
    assert run["status"] == "completed"


async def test_retry_unknown_run(maxq):
    server = await maxq.start()
    assert_error(await server.post(f"/runs/{new_uuid()}/retry"), 404, "RUN_NOT_FOUND")


# -- pause / resume ---------------------------------------------------------------

async def test_pause_and_resume(maxq):
    server = await maxq.start()
    held = await start_held(server)
    first_pid = held.pids()

    status, body = await server.post(f"/runs/{held.run_id}/pause")
    assert status == 200, body
    assert isinstance(body["message"], str)
    assert body["run"]["id"] == held.run_id
    assert body["run"]["status"] == "paused"
    status, run = await server.get(f"/runs/{held.run_id}")
    assert run["status"] == "paused"

    # The running step was terminated and put back, without spending a retry.
    s = await server.wait_step(held.run_id, "wait", {"pending"})
    assert s["retryCount"] == 0
    await _all_dead(server, first_pid)
    # Nothing is claimed while paused.
    await settle(server.reactor, 0.3)
    status, s = await server.get(f"/runs/{held.run_id}/steps/wait")
    assert s["status"] == "pending"
    assert len(held.attempts()) == 1

    assert_error(await server.post(f"/runs/{held.run_id}/pause"), 409,
                 "RUN_NOT_RUNNING")

    status, body = await server.post(f"/runs/{held.run_id}/resume")
    assert status == 200, body
    assert isinstance(body["message"], str)
    assert body["run"]["status"] == "running"
    await server.wait_step(held.run_id, "wait", {"running"})
    await server.wait_for(lambda: defer.succeed(len(held.attempts()) == 2),
                          what="step started again")
    assert_error(await server.post(f"/runs/{held.run_id}/resume"), 409,
                 "RUN_NOT_PAUSED")

    run = await held.finish()
    assert run["status"] == "completed", run
    status, s = await server.get(f"/runs/{held.run_id}/steps/wait")
    assert s["status"] == "completed"
    assert s["retryCount"] == 0


async def test_pause_and_resume_finished_runs(maxq):
    server = await maxq.start()
    add_noop(server)
    run = await server.trigger("noop")
    run = await server.wait_run(run["id"])
    assert_error(await server.post(f"/runs/{run['id']}/pause"), 409, "RUN_NOT_RUNNING")
    assert_error(await server.post(f"/runs/{run['id']}/resume"), 409, "RUN_NOT_PAUSED")
    status, again = await server.get(f"/runs/{run['id']}")
    assert again["status"] == "completed"


async def test_resume_running_run(maxq):
    server = await maxq.start()
    held = await start_held(server)
    assert_error(await server.post(f"/runs/{held.run_id}/resume"), 409,
                 "RUN_NOT_PAUSED")
    status, run = await server.get(f"/runs/{held.run_id}")
    assert run["status"] == "running"
    await held.finish()


async def test_pause_resume_unknown_run(maxq):
    server = await maxq.start()
    for action in ("pause", "resume"):
        assert_error(await server.post(f"/runs/{new_uuid()}/{action}"), 404,
                     "RUN_NOT_FOUND")


# -- step retry --------------------------------------------------------------------

def _add_step_retry_flow(server, flow="stepretry"):
    """
    Stage pre (good) then final stage s: a (flaky) and b depending on a.
    """
    state = state_dir(server, flow)
    server.flows.add(flow, staged_flow_sh({
        "": stage("pre", [step("good")]),
        "pre": stage("s", [step("a", "flaky"), step("b", dependsOn=["a"])],
                     final=True),
    }), steps={"flaky": flaky_sh(state), "ok": OK_SH})
    return state


async def test_retry_failed_step(maxq):
    server = await maxq.start()
    state = _add_step_retry_flow(server)
    run = await server.trigger("stepretry")
    run_id = run["id"]
    run = await server.wait_run(run_id)
    assert run["status"] == "failed", run
    status, b = await server.get(f"/runs/{run_id}/steps/b")
    assert b["status"] == "failed"
    assert b["error"] == {"reason": "dependency_failed", "failedStep": "a"}

    assert_error(await server.post(f"/runs/{run_id}/steps/good/retry"), 409,
                 "STEP_NOT_FAILED")
    assert_error(await server.post(f"/runs/{run_id}/steps/nope/retry"), 404,
                 "STEP_NOT_FOUND")
    assert_error(await server.post(f"/runs/{new_uuid()}/steps/a/retry"), 404,
                 "RUN_NOT_FOUND")
    status, again = await server.get(f"/runs/{run_id}")
    assert again["status"] == "failed"

    (state / "fixed").touch()
    status, body = await server.post(f"/runs/{run_id}/steps/a/retry")
    assert status == 200, body
    assert isinstance(body["message"], str)
    assert body["run"]["id"] == run_id
    assert sorted(body["steps"]) == ["a", "b"]

    run = await server.wait_run(run_id)
    assert run["status"] == "completed", run
    for sid in ("good", "a", "b"):
        status, s = await server.get(f"/runs/{run_id}/steps/{sid}")
        assert s["status"] == "completed", s
    assert read_lines(state / "flaky-attempts") == ["x", "x"]


async def test_retry_step_of_active_and_paused_run(maxq):
    server = await maxq.start()
    held = await start_held(server)
    # f1 fails at once; w2 keeps the stage (and the run) going.
    status, body = await server.post(f"/runs/{held.run_id}/steps", stage(
        "mixed", [step("f1", "fail"), step("w2", "wait")], failFast=False))
    assert status == 201, body
    await server.wait_step(held.run_id, "f1", {"failed"})
    assert_error(await server.post(f"/runs/{held.run_id}/steps/f1/retry"), 409,
                 "RUN_ACTIVE")
    status, s = await server.get(f"/runs/{held.run_id}/steps/f1")
    assert s["status"] == "failed"

    # A paused run's failed step may be retried.
    status, body = await server.post(f"/runs/{held.run_id}/pause")
    assert status == 200, body
    status, body = await server.post(f"/runs/{held.run_id}/steps/f1/retry")
    assert status == 200, body
    assert body["steps"] == ["f1"]
    status, s = await server.get(f"/runs/{held.run_id}/steps/f1")
    assert s["status"] == "pending"
    status, run = await server.get(f"/runs/{held.run_id}")
    assert run["status"] == "paused"

    status, body = await server.post(f"/runs/{held.run_id}/resume")
    assert status == 200, body
    held.release()
    run = await server.wait_run(held.run_id)
    # f1 fails again: stage mixed fails and the flow schedules nothing.
    assert run["status"] == "failed", run
    assert run["error"] == {"reason": "stage_failed", "stage": "mixed"}
