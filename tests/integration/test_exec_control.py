"""
Abort, pause/resume and retries (run and step) on real processes: SPEC §2
"Processes" (termination by process group) with the control routes of §3.
"""

from __future__ import annotations

import json

from .conftest import pids_alive
from .exec_support import Scenario, settle, stage, step, timed

SPAWNER = """
sleep 300 &
echo $! >> "$OUT/$MAXQ_STEP_ID.pids"
( sleep 300 & echo $! >> "$OUT/$MAXQ_STEP_ID.pids"; wait ) &
echo $! >> "$OUT/$MAXQ_STEP_ID.pids"
bash -c 'sleep 300 & echo $! >> "$1"; wait' x "$OUT/$MAXQ_STEP_ID.pids" &
echo $! >> "$OUT/$MAXQ_STEP_ID.pids"
echo $$ >> "$OUT/$MAXQ_STEP_ID.pids"
while [ "$(wc -l < "$OUT/$MAXQ_STEP_ID.pids")" -lt 6 ]; do sleep 0.02; done
echo ready > "$OUT/$MAXQ_STEP_ID.ready"
wait
"""


async def _none_alive(pids):
    return not pids_alive(pids)


def _pids(sc, step_id):
    return [int(x) for x in sc.read(f"{step_id}.pids").split()]


@timed(30)
async def test_abort_kills_children_and_grandchildren(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("spawner", "spawner"),
            step("waiting", "ok", dependsOn=["spawner"]),
        ], final=True)},
        steps={"spawner": SPAWNER, "ok": "true"},
    )
    run_id = await sc.trigger()
    await sc.wait_file("spawner.ready")
    pids = _pids(sc, "spawner")
    assert len(pids_alive(pids)) == 6
    status, body = await server.post(f"/runs/{run_id}/abort")
    assert status == 200, body
    assert body["processesKilled"] >= 1, body
    assert body["alreadyCompleted"] is False, body
    await server.wait_for(lambda: _none_alive(pids), 10, what=f"{pids} gone")
    run = await sc.finish(run_id)
    assert run["status"] == "failed", run
    assert run["terminationReason"] == "aborted", run
    assert run["error"] == {"reason": "aborted"}, run
    steps = await sc.steps_by_id(run_id)
    for s in steps.values():
        assert s["status"] == "failed", s
        assert s["terminationReason"] == "aborted", s
    assert [s["status"] for s in run["stages"]] == ["failed"]
    assert sc.starts("waiting") == 0
    # Idempotent.
    status, body = await server.post(f"/runs/{run_id}/abort")
    assert status == 200, body
    assert body["alreadyCompleted"] is True, body
    await settle(server.reactor)
    assert sc.starts("waiting") == 0
    assert sc.flow_keys() == ["start"]


@timed(30)
async def test_abort_kills_term_ignoring_step_after_grace(maxq):
    server = await maxq.start(abort_grace_ms=300)
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("stubborn", "stubborn")], final=True)},
        steps={"stubborn": """
            trap '' TERM
            sleep 300 &
            echo $! >> "$OUT/stubborn.pids"
            echo $$ >> "$OUT/stubborn.pids"
            echo ready > "$OUT/stubborn.ready"
            while :; do wait; done
        """},
    )
    run_id = await sc.trigger()
    await sc.wait_file("stubborn.ready")
    pids = _pids(sc, "stubborn")
    start = server.reactor.seconds()
    status, body = await server.post(f"/runs/{run_id}/abort")
    assert status == 200, body
    await server.wait_for(lambda: _none_alive(pids), 10, what=f"{pids} gone")
    # TERM was ignored: only the KILL after the grace ended them.
    assert server.reactor.seconds() - start >= 0.25
    run = await sc.finish(run_id)
    assert run["status"] == "failed"
    s = await sc.step(run_id, "stubborn")
    assert s["status"] == "failed"
    assert s["terminationReason"] == "aborted"


@timed(30)
async def test_abort_of_completed_run_is_harmless(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(plan={})
    run = await sc.run()
    assert run["status"] == "completed"
    status, body = await server.post(f"/runs/{run['id']}/abort")
    assert status == 200, body
    assert body["alreadyCompleted"] is True
    assert body["processesKilled"] == 0
    status, run = await server.get(f"/runs/{run['id']}")
    assert run["status"] == "completed"


@timed(30)
async def test_run_retry_does_not_rerun_completed_steps(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("a", "ok"),
            step("b", "gated", max_retries=1, retryDelayMs=50),
            step("c", "ok", dependsOn=["b"]),
            step("d", "ok", dependsOn=["a"]),
        ], final=True)},
        steps={"ok": "true", "gated": '[ -e "$OUT/allow" ] || finish 1'},
    )
    run = await sc.run()
    assert run["status"] == "failed", run
    b = await sc.step(run["id"], "b")
    assert b["retryCount"] == 1
    assert sc.starts("b") == 2
    assert sc.starts("c") == 0

    sc.touch("allow")
    status, body = await server.post(f"/runs/{run['id']}/retry")
    assert status == 200, body
    assert body["run"]["id"] == run["id"]
    assert body["run"]["status"] in ("pending", "running")
    run = await sc.finish(run["id"])
    assert run["status"] == "completed", run
    assert run["error"] in (None, {})
    assert sc.starts("a") == 1
    assert sc.starts("d") == 1
    assert sc.starts("b") == 3
    assert sc.starts("c") == 1
    steps = await sc.steps_by_id(run["id"])
    assert {s["status"] for s in steps.values()} == {"completed"}
    assert steps["b"]["retryCount"] == 0
    assert steps["c"]["error"] in (None, {})
    assert [s["status"] for s in run["stages"]] == ["completed"]


@timed(30)
async def test_run_retry_after_flow_failure_reuses_stage_records(maxq):
    """
    The flow fails in its callback after s1; after a run retry the flow
    continues (re-scheduling s1 if it starts over reuses its records), s1's
    steps are not run again, and the run completes.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={
            "start": stage("s1", [step("a", "ok")]),
            "done-s1": stage("s2", [step("z", "ok")], final=True),
        },
        steps={"ok": "true"},
        pre='[ "$key" = done-s1 ] && [ ! -e "$OUT/flow-ok" ] && exit 6',
    )
    run = await sc.run()
    assert run["status"] == "failed", run
    assert run["error"] == {"reason": "flow_failed", "exitCode": 6}, run
    sc.touch("flow-ok")
    status, body = await server.post(f"/runs/{run['id']}/retry")
    assert status == 200, body
    run = await sc.finish(run["id"])
    assert run["status"] == "completed", (run, sc.flow_keys())
    assert sc.starts("a") == 1
    assert sc.starts("z") == 1


@timed(30)
async def test_retry_rejected_for_completed_and_active_runs(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("h", "hold")], final=True)},
        steps={"hold": 'while [ ! -e "$OUT/go" ]; do sleep 0.05; done'},
    )
    run_id = await sc.trigger()
    await server.wait_step(run_id, "h", {"running"})
    status, body = await server.post(f"/runs/{run_id}/retry")
    assert status == 409 and body["code"] == "RUN_ACTIVE", body
    sc.touch("go")
    run = await sc.finish(run_id)
    assert run["status"] == "completed"
    status, body = await server.post(f"/runs/{run_id}/retry")
    assert status == 400 and body["code"] == "RUN_COMPLETED", body
    assert sc.starts("h") == 1


@timed(30)
async def test_pause_requeues_running_step_without_spending_retry(maxq):
    """
    Pause terminates the running step (and its children) and puts it back
    to pending with retryCount 0; nothing is claimed while paused; resume
    runs it again to completion.
    """
    server = await maxq.start(max_concurrent_steps=4)
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("long", "long", max_retries=0),
            step("next", "ok", dependsOn=["long"]),
        ], final=True)},
        steps={"ok": "true", "long": """
            if [ ! -e "$OUT/go" ]; then
              sleep 300 &
              echo $! >> "$OUT/long.pids"
              echo $$ >> "$OUT/long.pids"
              wait
            fi
        """},
    )
    run_id = await sc.trigger()
    await server.wait_step(run_id, "long", {"running"})
    await server.wait_for(lambda: _lines(sc, "long.pids", 2), 10, what="long pids")
    pids = _pids(sc, "long")

    status, body = await server.post(f"/runs/{run_id}/pause")
    assert status == 200, body
    assert body["run"]["id"] == run_id
    assert "message" in body
    await server.wait_for(lambda: _none_alive(pids), 10, what=f"{pids} gone")
    run = await server.wait_run(run_id, {"paused"})
    long = await server.wait_step(run_id, "long", {"pending"})
    assert long["retryCount"] == 0, long

    # Nothing is claimed while paused.
    await settle(server.reactor, 0.5)
    assert sc.starts("long") == 1
    assert (await sc.step(run_id, "long"))["status"] == "pending"
    status, run = await server.get(f"/runs/{run_id}")
    assert run["status"] == "paused"

    sc.touch("go")
    status, body = await server.post(f"/runs/{run_id}/resume")
    assert status == 200, body
    run = await sc.finish(run_id)
    assert run["status"] == "completed", run
    steps = await sc.steps_by_id(run_id)
    assert steps["long"]["status"] == "completed"
    assert steps["long"]["retryCount"] == 0
    assert steps["next"]["status"] == "completed"
    assert sc.starts("long") == 2
    assert sc.starts("next") == 1
    assert sc.flow_keys() == ["start"]


@timed(30)
async def test_pause_holds_pending_steps(maxq):
    """
    Steps that become ready while the run is paused wait for resume.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("first", "gated"),
            step("second", "ok", dependsOn=["first"]),
        ], final=True)},
        steps={"ok": "true",
               "gated": 'while [ ! -e "$OUT/go" ]; do sleep 0.05; done'},
    )
    run_id = await sc.trigger()
    await server.wait_step(run_id, "first", {"running"})

    # "running" is recorded at claim time, a moment before the script has
    # written its start marker; pause only once it has.
    async def first_started():
        return sc.starts("first") == 1

    await server.wait_for(first_started, what="first step's start marker")
    status, body = await server.post(f"/runs/{run_id}/pause")
    assert status == 200, body
    await server.wait_run(run_id, {"paused"})
    await server.wait_step(run_id, "first", {"pending"})
    sc.touch("go")
    await settle(server.reactor, 0.5)
    assert sc.starts("first") == 1
    assert sc.starts("second") == 0
    status, body = await server.post(f"/runs/{run_id}/resume")
    assert status == 200, body
    run = await sc.finish(run_id)
    assert run["status"] == "completed", run
    assert sc.starts("first") == 2
    assert sc.starts("second") == 1


@timed(30)
async def test_step_retry_resets_failed_step_and_its_dependents(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("a", "gated", max_retries=1, retryDelayMs=20),
            step("b", "ok", dependsOn=["a"]),
            step("c", "ok", dependsOn=["b"]),
            step("d", "ok"),
        ], final=True, failFast=False)},
        steps={"ok": "true", "gated": '[ -e "$OUT/allow" ] || finish 1'},
    )
    run = await sc.run()
    assert run["status"] == "failed", run
    assert run["error"] == {"reason": "stage_failed", "stage": "s1"}
    steps = await sc.steps_by_id(run["id"])
    assert steps["a"]["retryCount"] == 1
    assert steps["c"]["error"] == {"reason": "dependency_failed", "failedStep": "a"}
    assert steps["d"]["status"] == "completed"

    sc.touch("allow")
    status, body = await server.post(f"/runs/{run['id']}/steps/a/retry")
    assert status == 200, body
    assert sorted(body["steps"]) == ["a", "b", "c"], body
    assert body["run"]["id"] == run["id"]
    run = await sc.finish(run["id"])
    assert run["status"] == "completed", run
    steps = await sc.steps_by_id(run["id"])
    assert {s["status"] for s in steps.values()} == {"completed"}
    assert steps["a"]["retryCount"] == 0
    assert sc.starts("a") == 3
    assert sc.starts("b") == 1
    assert sc.starts("c") == 1
    assert sc.starts("d") == 1


@timed(30)
async def test_step_retry_of_completed_step_is_rejected(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("a", "ok"), step("b", "bad")], final=True,
                             failFast=False)},
        steps={"ok": "true", "bad": "finish 1"},
    )
    run = await sc.run()
    assert run["status"] == "failed"
    status, body = await server.post(f"/runs/{run['id']}/steps/a/retry")
    assert 400 <= status < 500 and status != 404, (status, body)
    await settle(server.reactor, 0.2)
    assert sc.starts("a") == 1


async def _lines(sc, name, n):
    path = sc.out / name
    return path.exists() and len(path.read_text().split()) >= n


@timed(30)
async def test_run_retry_reschedules_stage_reusing_its_records(maxq):
    """
    The first flow call schedules s1, sees it complete, then fails.  After a
    run retry the flow starts over and schedules s1 again: its records are
    reused, its completed step is not run again, and the run goes on.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={
            "start": stage("s1", [step("a", "ok")]),
            "done-s1": stage("s2", [step("z", "ok")], final=True),
        },
        steps={"ok": "true"},
        extra="""
        if [ "$key" = start ] && [ ! -e "$OUT/flow-ok" ]; then
          for i in $(seq 200); do [ -e "$OUT/a.end" ] && break; sleep 0.02; done
          sleep 0.3
          exit 5
        fi
        """,
    )
    run = await sc.run()
    assert run["status"] == "failed", run
    assert run["error"] == {"reason": "flow_failed", "exitCode": 5}, run
    assert sc.starts("a") == 1
    sc.touch("flow-ok")
    status, body = await server.post(f"/runs/{run['id']}/retry")
    assert status == 200, body
    run = await sc.finish(run["id"])
    assert run["status"] == "completed", (run, sc.flow_keys())
    assert sc.starts("a") == 1
    assert sc.starts("z") == 1
    await settle(server.reactor)
    # The failed first call is delivered again, then done-s1 once; the
    # final stage s2 ends the flow's calls.
    assert sc.flow_keys() == ["start", "start", "done-s1"], sc.read("curl.log")
    assert "curl:" not in sc.read("curl.log"), sc.read("curl.log")
    responses = [json.loads(line) for line in sc.read("curl.log").splitlines() if line.strip()]
    s1 = [r for r in responses if r.get("stage") == "s1"]
    assert len(s1) == 2, responses
    assert [s["status"] for s in s1[1]["steps"]] == ["completed"], s1[1]
    assert {s["name"]: s["status"] for s in run["stages"]} == {"s1": "completed",
                                                               "s2": "completed"}
