"""
SPEC §3: POST /runs/{runId}/steps/{stepId}/fields and GET /runs/{runId}/fields.
"""

from __future__ import annotations

from .api_support import (
    API_SH,
    assert_error,
    new_uuid,
    stage,
    staged_flow_sh,
    start_held,
    step,
)

EMIT_SH = API_SH + """\
url="$MAXQ_API/runs/$MAXQ_RUN_ID/steps/$MAXQ_STEP_ID/fields"
api -X POST "$url" -d '{"fields": {"a": '"$VAL"', "nested": {"x": 1}}}'
api -X POST "$url" -d '{"fields": {"b": "two", "nested": {"y": 2}}}'
# Fields do not decide the outcome: only the exit status does.
api -X POST "$url" -d '{"fields": {"status": "failed"}}'
exit 0
"""


async def _emitting_run(server):
    flow = staged_flow_sh({"": stage("s", [
        step("p-1", "emit", env={"VAL": "1"}),
        step("p-2", "emit", env={"VAL": "2"}),
        step("quiet", "ok"),
    ], final=True)})
    server.flows.add("emitter", flow, steps={"emit": EMIT_SH, "ok": "exit 0\n"})
    run = await server.trigger("emitter")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    return run["id"]


async def test_fields_posted_by_steps_merge_shallowly(maxq):
    server = await maxq.start()
    run_id = await _emitting_run(server)
    status, s = await server.get(f"/runs/{run_id}/steps/p-1")
    assert s["status"] == "completed"
    assert s["fields"] == {"a": 1, "b": "two", "nested": {"y": 2}, "status": "failed"}
    status, s = await server.get(f"/runs/{run_id}/steps/p-2")
    assert s["fields"]["a"] == 2


async def test_get_run_fields(maxq):
    server = await maxq.start()
    run_id = await _emitting_run(server)

    status, body = await server.get(f"/runs/{run_id}/fields")
    assert status == 200, body
    entries = {e["stepId"]: e for e in body["fields"]}
    assert {"p-1", "p-2"} <= set(entries)
    for sid in ("p-1", "p-2"):
        e = entries[sid]
        assert set(e) >= {"stepId", "stepName", "stageName", "status", "fields",
                          "completedAt"}, e
        assert e["stepName"] == "emit"
        assert e["stageName"] == "s"
        assert e["status"] == "completed"
        assert isinstance(e["completedAt"], int)
    assert entries["p-1"]["fields"] == {"a": 1, "b": "two", "nested": {"y": 2},
                                        "status": "failed"}

    status, body = await server.get(f"/runs/{run_id}/fields?stepId=p-1")
    assert status == 200, body
    assert [e["stepId"] for e in body["fields"]] == ["p-1"]
    assert body["fields"][0]["fields"]["a"] == 1

    status, body = await server.get(f"/runs/{run_id}/fields?stepId=p-1,p-2&fieldName=a")
    assert status == 200, body
    got = {e["stepId"]: e["fields"] for e in body["fields"]}
    assert got == {"p-1": {"a": 1}, "p-2": {"a": 2}}

    status, body = await server.get(f"/runs/{run_id}/fields?stepId=p-2&fieldName=nested")
    assert [e["fields"] for e in body["fields"]] == [{"nested": {"y": 2}}]


async def test_get_run_fields_unknown_run(maxq):
    server = await maxq.start()
    assert_error(await server.get(f"/runs/{new_uuid()}/fields"), 404, "RUN_NOT_FOUND")


async def test_post_fields(maxq):
    server = await maxq.start()
    held = await start_held(server)
    path = f"/runs/{held.run_id}/steps/wait/fields"

    status, body = await server.post(path, {"fields": {"k": 1, "obj": {"a": 1}}})
    assert status == 200, body
    assert body == {"id": "wait", "runId": held.run_id,
                    "fields": {"k": 1, "obj": {"a": 1}}}
    status, body = await server.post(path, {"fields": {"j": [1, 2], "obj": {"b": 2}}})
    assert status == 200, body
    assert body["fields"] == {"k": 1, "j": [1, 2], "obj": {"b": 2}}
    status, body = await server.post(path, {"fields": {"k": None}})
    assert body["fields"] == {"k": None, "j": [1, 2], "obj": {"b": 2}}
    status, body = await server.post(path, {"fields": {}})
    assert status == 200 and body["fields"] == {"k": None, "j": [1, 2], "obj": {"b": 2}}

    for bad in ({"fields": [1]}, {"fields": "x"}, {"fields": 5}, {"fields": None},
                {}, {"other": {}}, [1], "text"):
        assert_error(await server.post(path, bad), 400, "VALIDATION_ERROR")
    status, s = await server.get(f"/runs/{held.run_id}/steps/wait")
    assert s["fields"] == {"k": None, "j": [1, 2], "obj": {"b": 2}}

    assert_error(await server.post(f"/runs/{held.run_id}/steps/nope/fields",
                                   {"fields": {"a": 1}}), 404, "STEP_NOT_FOUND")
    assert_error(await server.post(f"/runs/{new_uuid()}/steps/wait/fields",
                                   {"fields": {"a": 1}}), 404, "RUN_NOT_FOUND")
    run = await held.finish()
    assert run["status"] == "completed"
    status, s = await server.get(f"/runs/{held.run_id}/steps/wait")
    assert s["fields"] == {"k": None, "j": [1, 2], "obj": {"b": 2}}
