"""
SPEC §3: POST /runs/{runId}/logs and GET /runs/{runId}/logs, and the entries
the server writes itself.
"""

from __future__ import annotations

from .api_support import (
    OK_SH,
    add_noop,
    assert_error,
    flaky_sh,
    new_uuid,
    now_ms,
    stage,
    staged_flow_sh,
    start_held,
    state_dir,
    step,
)

LOG_KEYS = {"id", "runId", "entityType", "entityId", "level", "message", "metadata",
            "createdAt"}


async def _completed_run(server):
    add_noop(server)
    run = await server.trigger("noop")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed"
    return run["id"]


async def test_post_log(maxq):
    server = await maxq.start()
    run_id = await _completed_run(server)
    before = now_ms()
    status, entry = await server.post(f"/runs/{run_id}/logs", {
        "entityType": "step", "entityId": "s-1", "level": "warn",
        "message": "disk almost full", "metadata": {"free": 3}})
    assert status == 201, entry
    assert LOG_KEYS <= set(entry), entry
    assert entry["runId"] == run_id
    assert entry["entityType"] == "step"
    assert entry["entityId"] == "s-1"
    assert entry["level"] == "warn"
    assert entry["message"] == "disk almost full"
    assert entry["metadata"] == {"free": 3}
    assert before - 1000 <= entry["createdAt"] <= now_ms() + 1000

    status, entry = await server.post(f"/runs/{run_id}/logs", {
        "entityType": "flow", "level": "debug", "message": "minimal"})
    assert status == 201, entry
    assert entry["entityId"] is None
    assert entry["metadata"] in ({}, None)


async def test_post_log_rejects_bad_bodies(maxq):
    server = await maxq.start()
    run_id = await _completed_run(server)
    status, before = await server.get(f"/runs/{run_id}/logs?limit=1000")
    good = {"entityType": "run", "level": "info", "message": "m"}
    bad_bodies = [
        {**good, "entityType": "bogus"},
        {**good, "entityType": "RUN"},
        {**good, "level": "fatal"},
        {**good, "level": "INFO"},
        {k: v for k, v in good.items() if k != "entityType"},
        {k: v for k, v in good.items() if k != "level"},
        {k: v for k, v in good.items() if k != "message"},
        {**good, "message": 5},
        {**good, "metadata": [1]},
        {**good, "metadata": "x"},
        {**good, "entityId": 5},
        [good],
        "text",
    ]
    for body in bad_bodies:
        assert_error(await server.post(f"/runs/{run_id}/logs", body), 400,
                     "VALIDATION_ERROR")
    status, after = await server.get(f"/runs/{run_id}/logs?limit=1000")
    assert after == before


async def test_list_logs_newest_first_with_filters(maxq):
    server = await maxq.start()
    run_id = await _completed_run(server)
    mine = [
        {"entityType": "run", "level": "info", "message": "m1"},
        {"entityType": "step", "entityId": "x", "level": "warn", "message": "m2"},
        {"entityType": "flow", "level": "debug", "message": "m3"},
        {"entityType": "stage", "entityId": "st", "level": "error", "message": "m4"},
        {"entityType": "step", "entityId": "y", "level": "warn", "message": "m5"},
    ]
    for body in mine:
        status, entry = await server.post(f"/runs/{run_id}/logs", body)
        assert status == 201, entry
    messages = {b["message"] for b in mine}

    status, body = await server.get(f"/runs/{run_id}/logs")
    assert status == 200, body
    logs = body["logs"]
    for entry in logs:
        assert LOG_KEYS <= set(entry), entry
        assert entry["runId"] == run_id
    own = [e["message"] for e in logs if e["message"] in messages]
    assert own == ["m5", "m4", "m3", "m2", "m1"]
    stamps = [e["createdAt"] for e in logs]
    assert stamps == sorted(stamps, reverse=True)

    status, body = await server.get(f"/runs/{run_id}/logs?level=warn")
    assert [e["message"] for e in body["logs"]] == ["m5", "m2"]
    status, body = await server.get(f"/runs/{run_id}/logs?entityType=step")
    assert all(e["entityType"] == "step" for e in body["logs"])
    assert [e["message"] for e in body["logs"] if e["message"] in messages] == [
        "m5", "m2"]
    status, body = await server.get(f"/runs/{run_id}/logs?entityType=step&entityId=x")
    assert [e["message"] for e in body["logs"]] == ["m2"]
    status, body = await server.get(f"/runs/{run_id}/logs?entityType=flow&level=debug")
    assert [e["message"] for e in body["logs"]] == ["m3"]
    status, body = await server.get(f"/runs/{run_id}/logs?level=info&entityType=run")
    assert "m1" in [e["message"] for e in body["logs"]]

    status, body = await server.get(f"/runs/{run_id}/logs?limit=2")
    assert [e["message"] for e in body["logs"]] == ["m5", "m4"]
    status, body = await server.get(f"/runs/{run_id}/logs?limit=1000")
    assert status == 200 and len(body["logs"]) == len(logs)


async def test_list_logs_default_limit(maxq):
    server = await maxq.start()
    run_id = await _completed_run(server)
    for i in range(101):
        status, entry = await server.post(f"/runs/{run_id}/logs", {
            "entityType": "flow", "level": "debug", "message": f"n{i}"})
        assert status == 201, entry
    status, body = await server.get(f"/runs/{run_id}/logs")
    assert len(body["logs"]) == 100
    assert body["logs"][0]["message"] == "n100"
    status, body = await server.get(f"/runs/{run_id}/logs?entityType=flow&limit=1000")
    assert len(body["logs"]) == 101


async def test_list_logs_rejects_bad_query_values(maxq):
    server = await maxq.start()
    run_id = await _completed_run(server)
    for query in ("limit=1001", "limit=0", "limit=abc", "limit=-1",
                  "level=fatal", "entityType=bogus"):
        assert_error(await server.get(f"/runs/{run_id}/logs?{query}"), 400,
                     "VALIDATION_ERROR")


async def test_logs_of_unknown_run(maxq):
    server = await maxq.start()
    run_id = new_uuid()
    assert_error(await server.get(f"/runs/{run_id}/logs"), 404, "RUN_NOT_FOUND")
    assert_error(await server.post(f"/runs/{run_id}/logs", {
        "entityType": "run", "level": "info", "message": "m"}), 404, "RUN_NOT_FOUND")


async def test_log_from_a_step_script(maxq):
    server = await maxq.start()
    flow = staged_flow_sh({"": stage("s", [step("talker", "talk")], final=True)})
    talk = """\
    curl -sS --fail-with-body -H 'Content-Type: application/json' \\
      -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/logs" \\
      -d '{"entityType": "step", "entityId": "'"$MAXQ_STEP_ID"'", "level": "info", "message": "hello from step"}'
    """
    server.flows.add("talky", flow, steps={"talk": talk})
    run = await server.trigger("talky")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    status, body = await server.get(f"/runs/{run['id']}/logs?entityType=step&entityId=talker")
    assert "hello from step" in [e["message"] for e in body["logs"]]


def _events(logs, entity_type=None):
    return [
        (e.get("metadata") or {}).get("event")
        for e in logs
        if entity_type is None or e["entityType"] == entity_type
    ]


async def test_server_logs_lifecycle_events(maxq):
    server = await maxq.start()
    state = state_dir(server, "lifecycle")
    server.flows.add("lifecycle", staged_flow_sh({
        "": stage("s", [step("a", "flaky")], final=True),
    }), steps={"flaky": flaky_sh(state), "ok": OK_SH})
    run = await server.trigger("lifecycle")
    run = await server.wait_run(run["id"])
    assert run["status"] == "failed", run
    status, body = await server.get(f"/runs/{run['id']}/logs?limit=1000")
    events = _events(body["logs"])
    for event in ("run_started", "step_failed", "stage_failed", "run_failed"):
        assert event in events, (event, body["logs"])
    # Newest first: the run failed after it started.
    assert events.index("run_failed") < events.index("run_started")

    (state / "fixed").touch()
    status, retried = await server.post(f"/runs/{run['id']}/retry")
    assert status == 200, retried
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    status, body = await server.get(f"/runs/{run['id']}/logs?limit=1000")
    events = _events(body["logs"])
    for event in ("run_retried", "stage_completed", "run_completed"):
        assert event in events, (event, body["logs"])
    assert events.index("run_completed") < events.index("run_retried")
    status, body = await server.get(f"/runs/{run['id']}/logs?entityType=stage&limit=1000")
    assert {"stage_failed", "stage_completed"} <= set(_events(body["logs"]))
    status, body = await server.get(f"/runs/{run['id']}/logs?entityType=step&limit=1000")
    step_logs = [e for e in body["logs"] if _events([e]) == ["step_failed"]]
    assert step_logs and all(e["entityId"] == "a" for e in step_logs)


async def test_server_logs_pause_resume_abort(maxq):
    server = await maxq.start()
    held = await start_held(server)
    for action in ("pause", "resume", "abort"):
        status, body = await server.post(f"/runs/{held.run_id}/{action}")
        assert status == 200, (action, body)
    await server.wait_run(held.run_id)
    status, body = await server.get(f"/runs/{held.run_id}/logs?entityType=run&limit=1000")
    events = _events(body["logs"])
    for event in ("run_paused", "run_resumed", "run_aborted"):
        assert event in events, (event, body["logs"])
    assert events.index("run_aborted") < events.index("run_resumed") < \
        events.index("run_paused")
