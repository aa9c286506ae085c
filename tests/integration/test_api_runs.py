"""
SPEC §3: POST /flows/{flow}/runs, POST /runs, GET /runs, GET /runs/{runId},
PATCH /runs/{runId}.
"""

from __future__ import annotations

import uuid

from twisted.internet import defer

from .api_support import (
    RUN_KEYS,
    STAGE_KEYS,
    add_noop,
    assert_error,
    now_ms,
    new_uuid,
    stage,
    staged_flow_sh,
    start_held,
    step,
)

CHATTY_FLOW = """\
echo "hello from $MAXQ_FLOW_NAME"
echo "oops" >&2
exit 0
"""


async def test_trigger_returns_created_run(maxq):
    server = await maxq.start()
    add_noop(server, "chatty", CHATTY_FLOW)
    before = now_ms()
    status, run = await server.post(
        "/flows/chatty/runs", {"input": {"x": [1, 2]}, "metadata": {"team": "a"}})
    assert status == 201, run
    assert RUN_KEYS <= set(run), set(run) ^ RUN_KEYS
    uuid.UUID(run["id"])
    assert run["flowName"] == "chatty"
    assert run["status"] in ("pending", "running")
    assert run["input"] == {"x": [1, 2]}
    assert run["metadata"] == {"team": "a"}
    assert run["error"] is None
    assert run["completedAt"] is None
    assert isinstance(run["createdAt"], int)
    assert before - 1000 <= run["createdAt"] <= now_ms() + 1000

    done = await server.wait_run(run["id"])
    assert done["status"] == "completed"
    assert done["id"] == run["id"]
    assert done["input"] == {"x": [1, 2]}
    assert done["metadata"] == {"team": "a"}
    assert done["error"] is None
    assert done["terminationReason"] is None
    assert done["stages"] == []
    assert "hello from chatty" in done["stdout"]
    assert "oops" in done["stderr"]
    assert done["createdAt"] <= done["startedAt"] <= done["completedAt"]
    assert isinstance(done["durationMs"], int) and done["durationMs"] >= 0


async def test_trigger_with_empty_body_object(maxq):
    server = await maxq.start()
    add_noop(server)
    status, run = await server.post("/flows/noop/runs", {})
    assert status == 201, run
    assert run["flowName"] == "noop"
    assert run["metadata"] in ({}, None)


async def test_trigger_accepts_any_json_input(maxq):
    server = await maxq.start()
    add_noop(server)
    for value in ([1, "two"], "text", 42, None):
        status, run = await server.post("/flows/noop/runs", {"input": value})
        assert status == 201, (value, run)
        assert run["input"] == value


async def test_trigger_round_trips_unicode(maxq):
    server = await maxq.start()
    add_noop(server)
    value = {"name": "h\u00e9llo \u2603 \U0001f680", "quote": "\"'\\"}
    status, run = await server.post("/flows/noop/runs", {"input": value,
                                                         "metadata": value})
    assert status == 201, run
    status, again = await server.get(f"/runs/{run['id']}")
    assert again["input"] == value and again["metadata"] == value


async def test_trigger_unknown_flow(maxq):
    server = await maxq.start()
    assert_error(await server.post("/flows/nope/runs", {}), 404, "FLOW_NOT_FOUND")
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 0


async def test_trigger_rejects_bad_bodies(maxq):
    server = await maxq.start()
    add_noop(server)
    for body in ([1, 2], "text", 5, {"metadata": [1]}, {"metadata": "x"}):
        assert_error(await server.post("/flows/noop/runs", body), 400,
                     "VALIDATION_ERROR")
        assert_error(await server.post("/runs", body if not isinstance(body, dict)
                                       else {"flowName": "noop", **body}),
                     400, "VALIDATION_ERROR")
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 0, runs


async def test_post_runs_with_flow_name(maxq):
    server = await maxq.start()
    add_noop(server)
    status, run = await server.post("/runs", {"flowName": "noop", "input": {"a": 1},
                                              "metadata": {"m": True}})
    assert status == 201, run
    assert RUN_KEYS <= set(run)
    assert run["flowName"] == "noop"
    assert run["input"] == {"a": 1}
    assert run["metadata"] == {"m": True}
    done = await server.wait_run(run["id"])
    assert done["status"] == "completed"


async def test_post_runs_requires_flow_name(maxq):
    server = await maxq.start()
    add_noop(server)
    assert_error(await server.post("/runs", {}), 400, "VALIDATION_ERROR")
    assert_error(await server.post("/runs", {"input": {}}), 400, "VALIDATION_ERROR")
    assert_error(await server.post("/runs", {"flowName": 5}), 400, "VALIDATION_ERROR")
    assert_error(await server.post("/runs", {"flowName": None}), 400,
                 "VALIDATION_ERROR")
    assert_error(await server.post("/runs", {"flowName": "nope"}), 404,
                 "FLOW_NOT_FOUND")
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 0, runs


async def test_idempotency_key_returns_the_same_run(maxq):
    server = await maxq.start()
    add_noop(server, "noop")
    add_noop(server, "other")
    key = {"Idempotency-Key": "key-1"}
    status, first = await server.post("/flows/noop/runs", {"input": 1}, headers=key)
    assert status == 201, first
    status, again = await server.post("/flows/noop/runs", {"input": 1}, headers=key)
    assert status == 200, again
    assert again["id"] == first["id"]
    status, again = await server.post("/runs", {"flowName": "noop", "input": 1},
                                      headers=key)
    assert status == 200, again
    assert again["id"] == first["id"]

    body = assert_error(await server.post("/flows/other/runs", {}, headers=key), 409,
                        "IDEMPOTENCY_CONFLICT")
    assert body["error"]
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 1, runs
    assert [r["id"] for r in runs["runs"]] == [first["id"]]

    status, other = await server.post("/flows/noop/runs", {},
                                      headers={"Idempotency-Key": "key-2"})
    assert status == 201, other
    assert other["id"] != first["id"]
    status, plain = await server.post("/flows/noop/runs", {})
    assert status == 201 and plain["id"] not in (first["id"], other["id"])
    status, runs = await server.get("/runs?flowName=noop")
    assert runs["pagination"]["total"] == 3, runs


async def test_idempotency_key_survives_completion(maxq):
    server = await maxq.start()
    add_noop(server)
    key = {"Idempotency-Key": "done-key"}
    status, first = await server.post("/flows/noop/runs", {}, headers=key)
    assert status == 201
    await server.wait_run(first["id"])
    status, again = await server.post("/flows/noop/runs", {}, headers=key)
    assert status == 200, again
    assert again["id"] == first["id"]
    assert again["status"] == "completed"


async def test_idempotency_key_concurrent_requests(maxq):
    server = await maxq.start()
    add_noop(server)
    key = {"Idempotency-Key": "race"}
    results = await defer.gatherResults([
        defer.ensureDeferred(server.post("/flows/noop/runs", {}, headers=key))
        for _ in range(6)
    ])
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 5 + [201], results
    assert len({run["id"] for _, run in results}) == 1, results
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 1, runs


async def test_list_runs_default_limit(maxq):
    server = await maxq.start()
    add_noop(server)
    runs = await defer.gatherResults([
        defer.ensureDeferred(server.trigger("noop")) for _ in range(23)])
    for run in runs:
        await server.wait_run(run["id"])
    status, body = await server.get("/runs")
    assert len(body["runs"]) == 20
    assert body["pagination"] == {"total": 23, "limit": 20, "offset": 0,
                                  "estimated": False}
    status, body = await server.get("/runs?offset=20")
    assert len(body["runs"]) == 3
    status, body = await server.get("/runs?limit=100")
    assert {r["id"] for r in body["runs"]} == {r["id"] for r in runs}


async def _make_runs(server):
    """
    Three completed runs of noop and one failed run of boom, triggered one
    after another (so their createdAt differ).  Returns ids in trigger order.
    """
    add_noop(server, "noop")
    add_noop(server, "boom", "exit 3\n")
    ids = []
    for flow in ("noop", "noop", "noop", "boom"):
        run = await server.trigger(flow)
        await server.wait_run(run["id"])
        ids.append(run["id"])
        # Make every createdAt distinct, so that the order is fully defined.
        await server.wait_for(lambda: defer.succeed(now_ms() > run["createdAt"]),
                              what="next millisecond")
    return ids


async def test_list_runs_pagination_filters_and_sort(maxq):
    server = await maxq.start()
    ids = await _make_runs(server)

    status, body = await server.get("/runs")
    assert status == 200, body
    assert body["pagination"] == {"total": 4, "limit": 20, "offset": 0,
                                  "estimated": False}
    runs = body["runs"]
    assert [r["id"] for r in runs] == ids[::-1]  # default: createdAt desc
    for r in runs:
        assert {"id", "flowName", "status", "createdAt"} <= set(r)

    status, body = await server.get("/runs?flowName=noop")
    assert body["pagination"]["total"] == 3
    assert {r["id"] for r in body["runs"]} == set(ids[:3])
    assert all(r["flowName"] == "noop" for r in body["runs"])

    status, body = await server.get("/runs?status=failed")
    assert [r["id"] for r in body["runs"]] == [ids[3]]
    assert body["pagination"]["total"] == 1
    status, body = await server.get("/runs?status=completed")
    assert body["pagination"]["total"] == 3
    status, body = await server.get("/runs?flowName=noop&status=failed")
    assert body["runs"] == [] and body["pagination"]["total"] == 0
    status, body = await server.get("/runs?flowName=missing")
    assert (status, body["runs"]) == (200, [])

    status, page1 = await server.get("/runs?limit=2")
    status, page2 = await server.get("/runs?limit=2&offset=2")
    status, page3 = await server.get("/runs?limit=2&offset=4")
    assert page1["pagination"] == {"total": 4, "limit": 2, "offset": 0,
                                   "estimated": False}
    assert page2["pagination"] == {"total": 4, "limit": 2, "offset": 2,
                                   "estimated": False}
    assert [r["id"] for r in page1["runs"] + page2["runs"]] == ids[::-1]
    assert page3["runs"] == []

    status, body = await server.get("/runs?sortOrder=asc")
    assert [r["id"] for r in body["runs"]] == ids
    status, body = await server.get("/runs?sortBy=createdAt&sortOrder=desc")
    assert [r["id"] for r in body["runs"]] == ids[::-1]
    for key in ("startedAt", "completedAt"):
        status, body = await server.get(f"/runs?sortBy={key}&sortOrder=asc")
        assert status == 200, body
        values = [r[key] for r in body["runs"]]
        assert values == sorted(values), (key, values)
        status, body = await server.get(f"/runs?sortBy={key}")
        values = [r[key] for r in body["runs"]]
        assert values == sorted(values, reverse=True), (key, values)

    status, body = await server.get("/runs?limit=100")
    assert status == 200 and body["pagination"]["limit"] == 100


async def test_list_runs_rejects_bad_query_values(maxq):
    server = await maxq.start()
    for query in ("limit=0", "limit=101", "limit=abc", "limit=-1", "limit=1.5",
                  "offset=-1", "offset=abc", "sortBy=evil", "sortBy=id%3B%20drop",
                  "sortOrder=up", "status=bogus"):
        assert_error(await server.get(f"/runs?{query}"), 400, "VALIDATION_ERROR")
    for status_name in ("pending", "running", "completed", "failed", "paused"):
        status, body = await server.get(f"/runs?status={status_name}")
        assert status == 200, (status_name, body)
    # Absurd numbers are bad input or an empty page, never a server fault.
    for query in ("limit=99999999999999999999999", "offset=99999999999999999999999",
                  "offset=9223372036854775808", "limit=1e3", "offset=1e3"):
        status, body = await server.get(f"/runs?{query}")
        assert status in (200, 400), (query, status, body)
        if status == 400:
            assert_error((status, body), 400, "VALIDATION_ERROR")


async def test_get_run_unknown(maxq):
    server = await maxq.start()
    assert_error(await server.get(f"/runs/{new_uuid()}"), 404, "RUN_NOT_FOUND")
    assert_error(await server.get("/runs/not-a-uuid"), 404, "RUN_NOT_FOUND")
    for odd in ("%00", "%C3%A9", "a" * 2000, "%2E%2E"):
        assert_error(await server.get(f"/runs/{odd}"), 404, "RUN_NOT_FOUND")
        assert_error(await server.get(f"/runs/{odd}/steps"), 404, "RUN_NOT_FOUND")
        assert_error(await server.post(f"/runs/{odd}/abort"), 404, "RUN_NOT_FOUND")


async def test_odd_query_strings_are_not_server_faults(maxq):
    server = await maxq.start()
    add_noop(server)
    run = await server.trigger("noop")
    await server.wait_run(run["id"])
    rid = run["id"]
    for path in ("/runs?flowName=%ff", "/runs?flowName=%00", "/runs?status=%ff",
                 "/runs?limit=%ff", "/runs?sortBy=%00",
                 f"/runs/{rid}/steps?stage=%ff", f"/runs/{rid}/steps?name=%00",
                 f"/runs/{rid}/logs?entityId=%ff", f"/runs/{rid}/logs?level=%00",
                 f"/runs/{rid}/fields?stepId=%ff", f"/runs/{rid}/fields?fieldName=%00",
                 "/runs?flowName=noop&flowName=other", "/runs?limit=5&limit=abc"):
        status, body = await server.get(path)
        assert status in (200, 400), (path, status, body)
        assert isinstance(body, dict), (path, body)


async def test_get_run_lists_its_stages(maxq):
    server = await maxq.start()
    flow = staged_flow_sh({
        "": stage("one", [step("one-a")]),
        "one": stage("two", [step("two-a"), step("two-b")], final=True),
    })
    server.flows.add("twostage", flow, steps={"ok": "exit 0\n"})
    run = await server.trigger("twostage")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    stages = run["stages"]
    assert [s["name"] for s in stages] == ["one", "two"]
    for s in stages:
        assert STAGE_KEYS <= set(s), s
        assert s["status"] == "completed"
        assert isinstance(s["createdAt"], int)
        assert s["completedAt"] >= s["createdAt"]
    assert [s["final"] for s in stages] == [False, True]
    assert stages[0]["completedAt"] <= stages[1]["createdAt"]


async def test_get_failed_run_has_error(maxq):
    server = await maxq.start()
    add_noop(server, "boom", "echo bye; exit 3\n")
    run = await server.trigger("boom")
    run = await server.wait_run(run["id"])
    assert run["status"] == "failed"
    assert run["error"] == {"reason": "flow_failed", "exitCode": 3}
    assert "bye" in run["stdout"]
    assert run["completedAt"] is not None


async def test_patch_run(maxq):
    server = await maxq.start()
    held = await start_held(server)
    path = f"/runs/{held.run_id}"
    status, run = await server.patch(path, {
        "name": "nightly", "description": "the nightly job",
        "output": {"rows": [1, 2]}, "metadata": {"owner": "me"}})
    assert status == 200, run
    assert run["id"] == held.run_id
    assert run["name"] == "nightly"
    assert run["description"] == "the nightly job"
    assert run["output"] == {"rows": [1, 2]}
    assert run["metadata"] == {"owner": "me"}

    # Only the keys given change; output may be any JSON value.
    status, run = await server.patch(path, {"output": 5})
    assert status == 200, run
    assert run["output"] == 5
    assert run["name"] == "nightly"
    assert run["metadata"] == {"owner": "me"}
    status, run = await server.patch(path, {"output": "text"})
    assert run["output"] == "text"

    status, before = await server.get(path)
    for body in ({"bogus": 1}, {"status": "completed"}, {"flowName": "x"},
                 {"name": 5}, {"description": ["x"]}, {"metadata": [1]},
                 {"metadata": "x"}, {"name": "ok", "bogus": 1}, [1], "text"):
        assert_error(await server.patch(path, body), 400, "VALIDATION_ERROR")
    status, after = await server.get(path)
    for key in ("name", "description", "output", "metadata", "status"):
        assert after[key] == before[key], key

    assert_error(await server.patch(f"/runs/{new_uuid()}", {"name": "x"}), 404,
                 "RUN_NOT_FOUND")
    run = await held.finish()
    assert run["status"] == "completed"
    assert run["output"] == "text"
    assert run["name"] == "nightly"


async def test_patch_run_from_the_flow(maxq):
    server = await maxq.start()
    flow = """\
    curl -sS --fail-with-body -X PATCH -H 'Content-Type: application/json' \\
      "$MAXQ_API/runs/$MAXQ_RUN_ID" \\
      -d '{"name": "set-by-flow", "output": {"answer": 42}}'
    """
    server.flows.add("patcher", flow)
    run = await server.trigger("patcher")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    assert run["name"] == "set-by-flow"
    assert run["output"] == {"answer": 42}
