"""
SPEC §3: GET /runs/{runId}/steps and GET /runs/{runId}/steps/{stepId}.
"""

from __future__ import annotations

from .api_support import (
    FAIL_SH,
    OK_SH,
    STEP_KEYS,
    assert_error,
    new_uuid,
    now_ms,
    stage,
    staged_flow_sh,
    step,
)

SHOW_SH = """\
echo "out:$SHARD:$MAXQ_STEP_ID:$MAXQ_STEP_NAME:$MAXQ_STAGE:$MAXQ_ATTEMPT"
echo "err-line" >&2
"""


async def _two_stage_run(server):
    """
    Stage s1: ok-1, ok-2 (ok) and echo-1 (show); stage s2 (final,
    failFast false): ok-3 (ok) and bad-1 (fail).  s2 fails, the flow
    schedules nothing, the run fails.
    """
    flow = staged_flow_sh({
        "": stage("s1", [step("ok-1"), step("ok-2"), step("echo-1", "show")]),
        "s1": stage("s2", [step("ok-3"), step("bad-1", "fail")], final=True,
                    failFast=False),
    })
    server.flows.add("multi", flow, steps={"ok": OK_SH, "fail": FAIL_SH,
                                           "show": SHOW_SH})
    run = await server.trigger("multi")
    run = await server.wait_run(run["id"])
    assert run["status"] == "failed", run
    assert run["error"] == {"reason": "stage_failed", "stage": "s2"}, run
    return run["id"]


def ids(body):
    return [s["id"] for s in body["steps"]]


async def test_list_steps_filters_and_pagination(maxq):
    server = await maxq.start()
    run_id = await _two_stage_run(server)
    base = f"/runs/{run_id}/steps"

    status, body = await server.get(base)
    assert status == 200, body
    assert body["pagination"] == {"total": 5, "limit": 100, "offset": 0}
    # Default order: createdAt ascending, so stage s1 before s2.
    assert set(ids(body)[:3]) == {"ok-1", "ok-2", "echo-1"}
    assert set(ids(body)[3:]) == {"ok-3", "bad-1"}
    for s in body["steps"]:
        assert {"id", "runId", "stage", "name", "status"} <= set(s), s
        assert "stdout" not in s and "stderr" not in s, s
        assert s["runId"] == run_id
    statuses = {s["id"]: s["status"] for s in body["steps"]}
    assert statuses == {"ok-1": "completed", "ok-2": "completed",
                        "echo-1": "completed", "ok-3": "completed",
                        "bad-1": "failed"}

    status, body = await server.get(f"{base}?stage=s2")
    assert set(ids(body)) == {"ok-3", "bad-1"}
    assert body["pagination"]["total"] == 2
    status, body = await server.get(f"{base}?status=failed")
    assert ids(body) == ["bad-1"]
    status, body = await server.get(f"{base}?name=ok")
    assert set(ids(body)) == {"ok-1", "ok-2", "ok-3"}
    status, body = await server.get(f"{base}?stage=s1&name=ok")
    assert set(ids(body)) == {"ok-1", "ok-2"}
    status, body = await server.get(f"{base}?stage=s1&status=failed")
    assert body["steps"] == [] and body["pagination"]["total"] == 0
    status, body = await server.get(f"{base}?stage=nope")
    assert (status, body["steps"]) == (200, [])

    status, all_steps = await server.get(base)
    status, page1 = await server.get(f"{base}?limit=2")
    status, page2 = await server.get(f"{base}?limit=2&offset=2")
    status, page3 = await server.get(f"{base}?limit=2&offset=4")
    assert page1["pagination"] == {"total": 5, "limit": 2, "offset": 0}
    assert ids(page1) + ids(page2) + ids(page3) == ids(all_steps)
    assert len(ids(page3)) == 1

    status, body = await server.get(f"{base}?sortOrder=desc")
    assert set(ids(body)[:2]) == {"ok-3", "bad-1"}
    status, body = await server.get(f"{base}?sortBy=createdAt&sortOrder=asc")
    assert ids(body) == ids(all_steps)
    for key in ("startedAt", "completedAt"):
        status, body = await server.get(f"{base}?sortBy={key}&sortOrder=asc")
        assert status == 200, body


async def test_list_steps_rejects_bad_query_values(maxq):
    server = await maxq.start()
    run_id = await _two_stage_run(server)
    for query in ("limit=0", "limit=abc", "limit=-5", "offset=-1", "offset=x",
                  "sortOrder=up", "sortBy=evil", "status=bogus"):
        assert_error(await server.get(f"/runs/{run_id}/steps?{query}"), 400,
                     "VALIDATION_ERROR")
    for status_name in ("pending", "running", "completed", "failed", "cancelled"):
        status, body = await server.get(f"/runs/{run_id}/steps?status={status_name}")
        assert status == 200, (status_name, body)
    for query in ("limit=99999999999999999999999", "offset=99999999999999999999999"):
        status, body = await server.get(f"/runs/{run_id}/steps?{query}")
        assert status in (200, 400), (query, status, body)


async def test_list_steps_unknown_run(maxq):
    server = await maxq.start()
    assert_error(await server.get(f"/runs/{new_uuid()}/steps"), 404, "RUN_NOT_FOUND")


async def test_get_step_has_everything(maxq):
    server = await maxq.start()
    flow = staged_flow_sh({"": stage("only", [
        step("first"),
        step("show", "show", 2, dependsOn=["first"], env={"SHARD": "7"}),
    ], final=True)})
    server.flows.add("details", flow, steps={"ok": OK_SH, "show": SHOW_SH})
    before = now_ms()
    run = await server.trigger("details")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run

    status, s = await server.get(f"/runs/{run['id']}/steps/show")
    assert status == 200, s
    assert STEP_KEYS <= set(s), STEP_KEYS - set(s)
    assert s["id"] == "show"
    assert s["runId"] == run["id"]
    assert s["stage"] == "only"
    assert s["name"] == "show"
    assert s["status"] == "completed"
    assert s["dependsOn"] == ["first"]
    assert s["retryCount"] == 0
    assert s["maxRetries"] == 2
    assert s["env"] == {"SHARD": "7"}
    assert s["fields"] in ({}, None)
    assert s["error"] is None
    assert s["exitCode"] == 0
    assert s["terminationReason"] is None
    assert "out:7:show:show:only:1" in s["stdout"]
    assert "err-line" in s["stderr"]
    assert isinstance(s["workerId"], str) and s["workerId"]
    assert before - 1000 <= s["createdAt"] <= s["startedAt"] <= s["completedAt"]
    assert s["queuedAt"] is None or s["createdAt"] <= s["queuedAt"] <= s["startedAt"]
    assert isinstance(s["durationMs"], int) and s["durationMs"] >= 0

    status, first = await server.get(f"/runs/{run['id']}/steps/first")
    assert first["completedAt"] <= s["startedAt"]


async def test_get_failed_step(maxq):
    server = await maxq.start()
    flow = staged_flow_sh({"": stage("only", [
        step("bad"),
        step("child", dependsOn=["bad"]),
        step("grandchild", dependsOn=["child"]),
    ], final=True)})
    server.flows.add("failing", flow, steps={
        "ok": "[ \"$MAXQ_STEP_ID\" != bad ] || { echo broken >&2; exit 4; }\n"})
    run = await server.trigger("failing")
    run = await server.wait_run(run["id"])
    assert run["status"] == "failed", run

    status, bad = await server.get(f"/runs/{run['id']}/steps/bad")
    assert status == 200, bad
    assert bad["status"] == "failed"
    assert bad["exitCode"] == 4
    assert "broken" in bad["stderr"]
    assert bad["completedAt"] is not None
    for dep in ("child", "grandchild"):
        status, s = await server.get(f"/runs/{run['id']}/steps/{dep}")
        assert s["status"] == "failed", s
        assert s["error"] == {"reason": "dependency_failed", "failedStep": "bad"}, s
        assert s["startedAt"] is None


async def test_get_step_unknown(maxq):
    server = await maxq.start()
    run_id = await _two_stage_run(server)
    assert_error(await server.get(f"/runs/{run_id}/steps/nope"), 404, "STEP_NOT_FOUND")
    assert_error(await server.get(f"/runs/{new_uuid()}/steps/ok-1"), 404,
                 "RUN_NOT_FOUND")
