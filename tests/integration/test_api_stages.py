"""
SPEC §3: POST /runs/{runId}/steps — scheduling a stage, and every error it
names.  Each rejected request must change nothing.
"""

from __future__ import annotations

from twisted.internet import defer

from .api_support import (
    add_noop,
    assert_error,
    new_uuid,
    read_lines,
    snapshot,
    stage,
    start_held,
    state_dir,
    step,
)


async def _rejects(server, held, bodies, status, code):
    """
    Post every body; each must fail with C{status}/C{code} and leave the
    run's steps and stages as they were.
    """
    before = await snapshot(server, held.run_id)
    for body in bodies:
        resp = await server.post(f"/runs/{held.run_id}/steps", body)
        try:
            assert_error(resp, status, code)
        except AssertionError as e:
            raise AssertionError(f"body {body!r}: {e}") from None
        after = await snapshot(server, held.run_id)
        assert after == before, (body, before, after)


async def test_schedule_stage(maxq):
    server = await maxq.start()
    held = await start_held(server)
    status, body = await server.post(f"/runs/{held.run_id}/steps", stage("extra", [
        step("e1"),
        step("e2", "ok", 1, dependsOn=["e1"], env={"SHARD": "0"},
             timeoutSeconds=30, retryDelayMs=0, retryBackoff=2.0),
    ], failFast=True))
    assert status == 201, body
    assert body["stage"] == "extra"
    assert body["scheduled"] == 2
    assert [(s["id"], s["name"]) for s in body["steps"]] == [("e1", "ok"), ("e2", "ok")]
    assert all(s["status"] == "pending" for s in body["steps"]), body
    assert all(set(s) >= {"id", "name", "status"} for s in body["steps"])

    await server.wait_step(held.run_id, "e2", {"completed"})
    status, s = await server.get(f"/runs/{held.run_id}/steps/e2")
    assert s["dependsOn"] == ["e1"]
    assert s["env"] == {"SHARD": "0"}
    assert s["maxRetries"] == 1
    assert s["stage"] == "extra"

    # A dependency on a completed step of an earlier stage is fine.
    await server.wait_for(lambda: _stage_status(server, held.run_id, "extra",
                                                "completed"),
                          what="stage extra completed")
    status, body = await server.post(f"/runs/{held.run_id}/steps", stage(
        "later", [step("l1", dependsOn=["e1", "e2"])]))
    assert status == 201, body
    assert body["scheduled"] == 1
    await server.wait_step(held.run_id, "l1", {"completed"})

    status, run = await server.get(f"/runs/{held.run_id}")
    assert run["status"] == "running"
    run = await held.finish()
    assert run["status"] == "completed", run
    assert {s["name"]: s["status"] for s in run["stages"]} == {
        "hold": "completed", "extra": "completed", "later": "completed"}


async def _stage_status(server, run_id, name, status):
    code, run = await server.get(f"/runs/{run_id}")
    return any(s["name"] == name and s["status"] == status for s in run["stages"])


async def test_schedule_many_steps_sharing_a_name(maxq):
    server = await maxq.start()
    held = await start_held(server)
    steps = [step(f"shard-{i}", env={"SHARD": str(i)}) for i in range(5)]
    status, body = await server.post(f"/runs/{held.run_id}/steps",
                                     stage("fan", steps))
    assert status == 201, body
    assert body["scheduled"] == 5
    for i in range(5):
        await server.wait_step(held.run_id, f"shard-{i}", {"completed"})
    await held.finish()


async def test_schedule_concurrent_same_stage(maxq):
    server = await maxq.start()
    held = await start_held(server)
    path = f"/runs/{held.run_id}/steps"
    results = await defer.gatherResults([
        defer.ensureDeferred(server.post(path, stage("race", [step(f"r{i}", "wait")])))
        for i in range(4)])
    statuses = sorted(status for status, _ in results)
    assert statuses == [201, 409, 409, 409], results
    for status, body in results:
        if status == 409:
            assert_error((status, body), 409, "STAGE_EXISTS")
    steps = await server.steps(held.run_id, stage="race")
    assert len(steps) == 1
    # Same step id in different stages at once: only one wins.
    results = await defer.gatherResults([
        defer.ensureDeferred(server.post(path, stage(f"dup{i}", [step("same")])))
        for i in range(4)])
    assert sorted(status for status, _ in results)[0] == 201
    assert [status for status, _ in results].count(201) == 1, results
    for status, body in results:
        if status != 201:
            assert body["code"] == "DUPLICATE_STEP_ID", body
    assert len([s for s in await server.steps(held.run_id) if s["id"] == "same"]) == 1
    run = await held.finish()
    assert run["status"] == "completed", run


async def test_schedule_invalid_step_id(maxq):
    server = await maxq.start()
    held = await start_held(server)
    bad_ids = ["bad id", "../x", "a/b", "", "a.b", "semi;colon", "ünïcode"]
    bodies = [stage("s", [step("fine-1"), step(bad)]) for bad in bad_ids]
    await _rejects(server, held, bodies, 400, "INVALID_STEP_ID")
    await held.finish()


async def test_schedule_duplicate_step_id_in_body(maxq):
    server = await maxq.start()
    held = await start_held(server)
    bodies = [
        stage("s", [step("x"), step("x")]),
        stage("s", [step("y"), step("x"), step("x", dependsOn=["y"])]),
    ]
    await _rejects(server, held, bodies, 400, "DUPLICATE_STEP_ID")
    await held.finish()


async def test_schedule_duplicate_step_id_already_in_run(maxq):
    server = await maxq.start()
    held = await start_held(server)
    # "wait" is the held stage's step.  SPEC does not say whether this is bad
    # input (400) or a state conflict (409): accept either, the code is fixed.
    before = await snapshot(server, held.run_id)
    resp = await server.post(f"/runs/{held.run_id}/steps",
                             stage("s", [step("fine-1"), step("wait")]))
    assert resp[0] in (400, 409), resp
    assert_error(resp, resp[0], "DUPLICATE_STEP_ID")
    assert await snapshot(server, held.run_id) == before
    await held.finish()


async def test_schedule_duplicate_step_id_of_a_finished_stage(maxq):
    server = await maxq.start()
    held = await start_held(server)
    status, body = await server.post(f"/runs/{held.run_id}/steps",
                                     stage("first", [step("done-1")]))
    assert status == 201, body
    await server.wait_step(held.run_id, "done-1", {"completed"})
    before = await snapshot(server, held.run_id)
    resp = await server.post(f"/runs/{held.run_id}/steps",
                             stage("second", [step("done-1")]))
    assert resp[0] in (400, 409), resp
    assert_error(resp, resp[0], "DUPLICATE_STEP_ID")
    assert await snapshot(server, held.run_id) == before
    await held.finish()


async def test_schedule_step_not_found(maxq):
    server = await maxq.start()
    held = await start_held(server)
    flows = server.flows
    # A script that exists but is not executable.
    flows.write_script(flows.root / held.flow / "steps" / "noexec" / "step.sh",
                       "exit 0\n", executable=False)
    # A directory without step.sh.
    (flows.root / held.flow / "steps" / "nostep").mkdir(parents=True)
    # A real, executable step of another flow, reachable only by "..".
    flows.add("other", "exit 0\n", steps={"ok": "exit 0\n"})
    names = ["missing", "noexec", "nostep", "../../other/steps/ok", "../wait",
             "..", "."]
    bodies = [stage("s", [step("fine-1"), step("bad-1", name)]) for name in names]
    # SPEC names the code, not the status: a missing script is bad input
    # (400) or an unknown resource (404).
    before = await snapshot(server, held.run_id)
    for body in bodies:
        resp = await server.post(f"/runs/{held.run_id}/steps", body)
        assert resp[0] in (400, 404), (body, resp)
        assert_error(resp, resp[0], "STEP_NOT_FOUND")
        assert await snapshot(server, held.run_id) == before, body
    await held.finish()


async def test_schedule_symlinked_step_outside_the_root(maxq):
    server = await maxq.start()
    held = await start_held(server)
    marker = state_dir(server, "escape") / "ran"
    outside = server.flows.root.parent / "outside-step"
    server.flows.write_script(outside / "step.sh", f"echo ran >> '{marker}'\n")
    (server.flows.root / held.flow / "steps" / "linked").symlink_to(
        outside, target_is_directory=True)
    before = await snapshot(server, held.run_id)
    resp = await server.post(f"/runs/{held.run_id}/steps",
                             stage("s", [step("esc", "linked")]))
    assert resp[0] in (400, 404), resp
    assert_error(resp, resp[0], "STEP_NOT_FOUND")
    assert await snapshot(server, held.run_id) == before
    run = await held.finish()
    assert run["status"] == "completed"
    assert read_lines(marker) == []


async def test_schedule_unknown_dependency(maxq):
    server = await maxq.start()
    held = await start_held(server)
    bodies = [
        stage("s", [step("a", dependsOn=["nope"])]),
        stage("s", [step("a"), step("b", dependsOn=["a", "nope"])]),
        # Another run's step ids mean nothing here.
        stage("s", [step("a", dependsOn=["../wait"])]),
    ]
    await _rejects(server, held, bodies, 400, "UNKNOWN_DEPENDENCY")
    await held.finish()


async def test_schedule_dependency_cycle(maxq):
    server = await maxq.start()
    held = await start_held(server)
    bodies = [
        stage("s", [step("a", dependsOn=["b"]), step("b", dependsOn=["a"])]),
        stage("s", [step("a", dependsOn=["a"])]),
        stage("s", [step("a", dependsOn=["c"]), step("b", dependsOn=["a"]),
                    step("c", dependsOn=["b"]), step("d")]),
    ]
    await _rejects(server, held, bodies, 400, "DEPENDENCY_CYCLE")
    await held.finish()


async def test_schedule_invalid_env(maxq):
    server = await maxq.start()
    held = await start_held(server)
    envs = [
        {"1BAD": "x"}, {"BAD-KEY": "x"}, {"": "x"}, {"A B": "x"},
        {"MAXQ_FOO": "x"}, {"MAXQ_RUN_ID": "x"}, {"MAXQ_API": "x"},
        {"LD_PRELOAD": "/tmp/evil.so"}, {"LD_LIBRARY_PATH": "/tmp"},
        {"BASH_ENV": "/tmp/evil.sh"}, {"ENV": "/tmp/evil.sh"},
        {"BASH_FUNC_ls%%": "() { echo; }"}, {"SHELLOPTS": "xtrace"},
        {"BASHOPTS": "extglob"}, {"PS4": "$(id)"}, {"IFS": "x"},
        {"PROMPT_COMMAND": "id"},
        {"OK": 1}, {"OK": None}, {"OK": ["x"]}, {"OK": True},
        {"GOOD": "fine", "LD_PRELOAD": "x"},
    ]
    bodies = [stage("s", [step("fine-1"), step("bad-1", env=env)]) for env in envs]
    await _rejects(server, held, bodies, 400, "INVALID_ENV")
    await held.finish()


async def test_schedule_validation_errors(maxq):
    server = await maxq.start()
    held = await start_held(server)
    good = step("fine-1")
    bad_steps = [
        {"id": "a", "name": "ok"},                       # maxRetries missing
        step("a", max_retries=-1),
        step("a", max_retries="1"),
        step("a", max_retries=1.5),
        step("a", max_retries=True),
        step("a", max_retries=None),
        {"name": "ok", "maxRetries": 0},                 # id missing
        {"id": "a", "maxRetries": 0},                    # name missing
        step("a", dependsOn="b"),
        step("a", dependsOn=[1]),
        step("a", timeoutSeconds="x"),
        step("a", retryDelayMs="x"),
        "a",
        ["a"],
        None,
    ]
    bodies = [stage("s", [good, bad]) for bad in bad_steps]
    bodies += [
        {"stage": "s", "final": "yes", "steps": [good]},
        {"stage": "s", "final": 1, "steps": [good]},
        {"stage": "s", "steps": [good]},                  # final missing
        {"stage": "s", "final": False, "steps": []},
        {"stage": "s", "final": False},                   # steps missing
        {"stage": "s", "final": False, "steps": good},
        {"stage": "bad stage", "final": False, "steps": [good]},
        {"stage": "../s", "final": False, "steps": [good]},
        {"stage": "", "final": False, "steps": [good]},
        {"stage": 5, "final": False, "steps": [good]},
        {"final": False, "steps": [good]},                # stage missing
        {"stage": "s", "final": False, "failFast": "no", "steps": [good]},
        [stage("s", [good])],
        "text",
    ]
    await _rejects(server, held, bodies, 400, "VALIDATION_ERROR")
    await held.finish()


async def test_schedule_run_not_found(maxq):
    server = await maxq.start()
    add_noop(server)
    assert_error(await server.post(f"/runs/{new_uuid()}/steps",
                                   stage("s", [step("a")])), 404, "RUN_NOT_FOUND")


async def test_schedule_on_finished_runs(maxq):
    server = await maxq.start()
    add_noop(server, "noop", "exit 0\n")
    add_noop(server, "boom", "exit 2\n")
    for flow, final_status in (("noop", "completed"), ("boom", "failed")):
        server.flows.add_step(flow, "ok", "exit 0\n")
        run = await server.trigger(flow)
        run = await server.wait_run(run["id"])
        assert run["status"] == final_status
        assert_error(await server.post(f"/runs/{run['id']}/steps",
                                       stage("late", [step("a")])),
                     409, "RUN_NOT_ACTIVE")
        assert await server.steps(run["id"]) == []
        status, again = await server.get(f"/runs/{run['id']}")
        assert again["stages"] == [] and again["status"] == final_status


async def test_schedule_on_aborted_run(maxq):
    server = await maxq.start()
    held = await start_held(server)
    status, body = await server.post(f"/runs/{held.run_id}/abort")
    assert status == 200, body
    await server.wait_run(held.run_id)
    before = await snapshot(server, held.run_id)
    assert_error(await server.post(f"/runs/{held.run_id}/steps",
                                   stage("late", [step("a")])), 409, "RUN_NOT_ACTIVE")
    assert await snapshot(server, held.run_id) == before


async def test_schedule_stage_exists(maxq):
    server = await maxq.start()
    held = await start_held(server)
    await _rejects(server, held, [stage("hold", [step("w2")])], 409, "STAGE_EXISTS")
    # Another unfinished stage of the test's own making.
    status, body = await server.post(f"/runs/{held.run_id}/steps",
                                     stage("mine", [step("m1", "wait")]))
    assert status == 201, body
    await _rejects(server, held, [stage("mine", [step("m2")], final=True)], 409,
                   "STAGE_EXISTS")
    run = await held.finish()
    assert run["status"] == "completed"
