"""
SPEC §2 rules 5, 6 and 7 (the failure side): the dependency cascade,
cancellation and failFast, stage failure callbacks and recovery, flow
failures.
"""

from __future__ import annotations

from .conftest import pids_alive
from .exec_support import Scenario, settle, stage, step, timed

# a fails at once; b and c depend on it (c transitively); r runs a while and
# p waits for r, so p is still pending when a fails.
CASCADE_STEPS = [
    step("a", "fail"),
    step("b", "ok", dependsOn=["a"]),
    step("c", "ok", dependsOn=["b"]),
    step("r", "slow"),
    step("p", "ok", dependsOn=["r"]),
]
CASCADE_SCRIPTS = {"fail": "finish 1", "ok": "true", "slow": "sleep 0.8"}


@timed(30)
async def test_failure_cascade_fails_dependents_and_cancels_pending(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", CASCADE_STEPS, final=True)},
        steps=CASCADE_SCRIPTS,
    )
    run = await sc.run()
    steps = await sc.steps_by_id(run["id"])
    assert steps["a"]["status"] == "failed"
    assert steps["a"]["error"] == {"reason": "exit_code", "exitCode": 1}
    for dependent in ("b", "c"):
        s = steps[dependent]
        assert s["status"] == "failed", s
        assert s["error"] == {"reason": "dependency_failed", "failedStep": "a"}, s
        assert s["startedAt"] is None, s
        assert sc.starts(dependent) == 0
    # The running step finished normally.
    assert steps["r"]["status"] == "completed", steps["r"]
    assert len(sc.marks("r", "end")) == 1
    # The pending, unrelated step was cancelled without running.
    assert steps["p"]["status"] == "cancelled", steps["p"]
    assert steps["p"]["error"] == {"reason": "cancelled", "failedStep": "a"}, steps["p"]
    assert sc.starts("p") == 0
    # The stage failed, the flow was called about it, scheduled nothing.
    assert [(s["name"], s["status"]) for s in run["stages"]] == [("s1", "failed")]
    assert run["status"] == "failed"
    assert run["error"] == {"reason": "stage_failed", "stage": "s1"}, run
    assert sc.flow_keys() == ["start", "failed-s1"]


@timed(30)
async def test_stage_does_not_end_while_a_step_runs(maxq):
    """
    The failed stage's callback comes only after the running step ended.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", CASCADE_STEPS, final=True)},
        steps=CASCADE_SCRIPTS,
    )
    run = await sc.run()
    calls = sc.flow_log()
    assert calls[1]["key"] == "failed-s1"
    assert calls[1]["start"] >= sc.interval("r")[1]
    stage_s1 = run["stages"][0]
    assert stage_s1["completedAt"] is not None


@timed(30)
async def test_fail_fast_false_keeps_pending_steps(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", CASCADE_STEPS, final=True, failFast=False)},
        steps=CASCADE_SCRIPTS,
    )
    run = await sc.run()
    steps = await sc.steps_by_id(run["id"])
    assert steps["a"]["status"] == "failed"
    assert steps["b"]["error"] == {"reason": "dependency_failed", "failedStep": "a"}
    assert steps["c"]["error"] == {"reason": "dependency_failed", "failedStep": "a"}
    assert steps["r"]["status"] == "completed"
    assert steps["p"]["status"] == "completed", steps["p"]
    assert sc.starts("p") == 1
    assert sc.interval("p")[0] >= sc.interval("r")[1]
    # Not every step completed: the stage still failed.
    assert run["stages"][0]["status"] == "failed"
    assert run["error"] == {"reason": "stage_failed", "stage": "s1"}, run


@timed(30)
async def test_failed_stage_callback_and_recovery_stage_completes_run(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={
            "start": stage("s1", [step("a", "ok")]),
            "done-s1": stage("s2", [step("b", "fail")]),
            "failed-s2": stage("recover", [step("fix", "ok")], final=True),
        },
        steps={"ok": "true", "fail": "finish 5"},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    assert run["error"] in (None, {}), run
    calls = sc.flow_log()
    assert [c["key"] for c in calls] == ["start", "done-s1", "failed-s2"]
    assert calls[2]["failed"] == "s2"
    assert calls[2]["completed"] == "s1"
    assert calls[1]["failed"] == "<unset>"
    stages = {s["name"]: s["status"] for s in run["stages"]}
    assert stages == {"s1": "completed", "s2": "failed", "recover": "completed"}
    assert sc.starts("fix") == 1


@timed(30)
async def test_first_stage_failure_has_empty_completed_stage(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={
            "start": stage("s1", [step("b", "fail")]),
            "failed-s1": stage("recover", [step("fix", "ok")]),
        },
        steps={"ok": "true", "fail": "finish 1"},
    )
    run = await sc.run()
    calls = sc.flow_log()
    assert [c["key"] for c in calls][:2] == ["start", "failed-s1"]
    assert calls[1]["failed"] == "s1"
    assert calls[1]["completed"] == ""
    # recover is not final: the flow hears about it and schedules nothing.
    assert [c["key"] for c in calls] == ["start", "failed-s1", "done-recover"]
    assert calls[2]["completed"] == "recover"
    assert calls[2]["failed"] in ("<unset>", "")
    assert run["status"] == "completed", run


@timed(30)
async def test_failed_stage_without_recovery_fails_run(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={
            "start": stage("s1", [step("a", "ok")]),
            "done-s1": stage("s2", [step("b", "fail")], final=True),
        },
        steps={"ok": "true", "fail": "finish 1"},
    )
    run = await sc.run()
    assert run["status"] == "failed", run
    assert run["error"] == {"reason": "stage_failed", "stage": "s2"}, run
    assert {s["name"]: s["status"] for s in run["stages"]} == {"s1": "completed", "s2": "failed"}
    await settle(server.reactor)
    assert sc.flow_keys() == ["start", "done-s1", "failed-s2"]


@timed(30)
async def test_flow_exit_nonzero_on_first_call_fails_run(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(plan={}, extra="exit 7")
    run = await sc.run()
    assert run["status"] == "failed", run
    assert run["error"] == {"reason": "flow_failed", "exitCode": 7}, run
    await settle(server.reactor)
    assert sc.flow_keys() == ["start"]


@timed(30)
async def test_flow_failure_terminates_running_and_cancels_pending(maxq):
    """
    The flow schedules a stage, waits until its first step runs, and exits
    3: the run fails, the running step (and its child) is terminated, the
    pending one is cancelled and never runs.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("long", "long"),
            step("later", "ok", dependsOn=["long"]),
        ], final=True)},
        steps={"ok": "true", "long": """
            sleep 300 &
            echo $! > "$OUT/long.pid"
            wait
        """},
        extra="""
        for i in $(seq 200); do [ -s "$OUT/long.pid" ] && break; sleep 0.05; done
        exit 3
        """,
    )
    run = await sc.run()
    assert run["status"] == "failed", run
    assert run["error"] == {"reason": "flow_failed", "exitCode": 3}, run
    pid = int(sc.read("long.pid"))
    await server.wait_for(lambda: _none_alive([pid]), 10, what="step child gone")
    steps = await sc.steps_by_id(run["id"])
    long, later = steps["long"], steps["later"]
    assert long["status"] in ("failed", "cancelled"), long
    assert long["terminationReason"] == "flow_failed", long
    assert sc.marks("long", "end") == []
    assert later["status"] == "cancelled", later
    assert sc.starts("later") == 0
    assert run["stages"][0]["status"] == "failed"
    await settle(server.reactor)
    assert sc.starts("later") == 0
    assert sc.flow_keys() == ["start"]


@timed(30)
async def test_flow_exit_nonzero_in_callback_fails_run(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("a", "ok")])},
        steps={"ok": "true"},
        extra='[ "$key" = done-s1 ] && exit 4; exit 0',
    )
    run = await sc.run()
    assert run["status"] == "failed", run
    assert run["error"] == {"reason": "flow_failed", "exitCode": 4}, run
    assert {s["name"]: s["status"] for s in run["stages"]} == {"s1": "completed"}
    assert sc.flow_keys() == ["start", "done-s1"]


async def _none_alive(pids):
    return not pids_alive(pids)


@timed(30)
async def test_cancellation_is_limited_to_the_failed_stage(maxq):
    """
    "other pending steps of the stage become cancelled": a pending step of
    another stage running alongside keeps its place and runs.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={
            "start": [stage("A", [step("x", "fail")]),
                      stage("B", [step("r", "slow"), step("p", "ok", dependsOn=["r"])])],
            "failed-A": stage("recover", [step("fix", "ok")]),
        },
        steps=CASCADE_SCRIPTS,
    )
    run = await sc.run()
    steps = await sc.steps_by_id(run["id"])
    assert steps["x"]["status"] == "failed"
    assert steps["p"]["status"] == "completed", steps["p"]
    assert sc.starts("p") == 1
    stages = {s["name"]: s["status"] for s in run["stages"]}
    assert stages == {"A": "failed", "B": "completed", "recover": "completed"}, stages
    assert sorted(sc.flow_keys()) == ["done-B", "done-recover", "failed-A", "start"]
    assert run["status"] == "completed", run
