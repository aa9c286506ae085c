"""
Backfills through real HTTP (SPEC §5), on both backends: one run per fire
time in [from, to], oldest first within maxActiveRuns, reprocess, dry
runs, cancel, the listings and every refusal.
"""

from __future__ import annotations

from .api_support import assert_error
from .schedule_support import add_scheduled, calls, intervals_overlap, runs_of, sleep

HOUR = 3_600_000
# 2026-12-03T00:00:00Z
DAY = 1_796_256_000_000
HOURLY = 'schedule: "0 * * * *"\n'


async def _wait_backfill(server, backfill_id, status="completed", timeout=20.0):
    async def check():
        code, body = await server.get(f"/backfills/{backfill_id}")
        assert code == 200, body
        return body if body["status"] == status else None

    return await server.wait_for(check, timeout, what=f"backfill {status}")


async def test_backfill_runs_each_fire_time_oldest_first_one_at_a_time(maxq, reactor):
    server = await maxq.start()
    flow_dir = add_scheduled(server, "report", HOURLY, sleep=0.3)
    status, body = await server.post("/flows/report/backfills", {
        "from": DAY, "to": DAY + 3 * HOUR, "input": {"full": True}})
    assert status == 201, body
    assert set(body) >= {"id", "flowName", "from", "to", "status", "runs", "skipped"}
    assert body["flowName"] == "report" and body["status"] == "running"
    assert [r["scheduledAt"] for r in body["runs"]] == [DAY + i * HOUR for i in range(4)]
    assert body["skipped"] == []
    done = await _wait_backfill(server, body["id"])
    assert done["counts"] == {"completed": 4}
    runs = [r for r in await runs_of(server, "report") if r["trigger"] == "backfill"]
    assert len(runs) == 4 and all(r["input"] == {"full": True} for r in runs)
    assert not intervals_overlap(runs)
    by_start = sorted(runs, key=lambda r: r["startedAt"])
    assert [r["scheduledAt"] for r in by_start] == [DAY + i * HOUR for i in range(4)]
    lines = {c[2]: c for c in calls(flow_dir)}
    first = lines[body["runs"][0]["id"]]
    assert first[:2] == ["backfill", "2026-12-03T00:00:00Z"]
    status, run = await server.get(f"/runs/{body['runs'][0]['id']}")
    assert run["trigger"] == "backfill" and run["scheduledAt"] == DAY
    status, listed = await server.get("/flows/report/backfills")
    assert status == 200 and [b["id"] for b in listed["backfills"]] == [body["id"]]
    assert listed["backfills"][0]["counts"] == {"completed": 4}


async def test_backfill_max_active_runs_starts_several(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "wide", HOURLY, sleep=1.5)
    status, body = await server.post("/flows/wide/backfills", {
        "from": DAY, "to": DAY + 5 * HOUR, "maxActiveRuns": 3})
    assert status == 201

    async def three_running():
        code, view = await server.get(f"/backfills/{body['id']}")
        return view if view["counts"].get("running") == 3 else None

    await server.wait_for(three_running, what="three runs at once")
    done = await _wait_backfill(server, body["id"])
    assert done["counts"] == {"completed": 6}


async def test_backfill_reprocess_none_failed_all(maxq, reactor):
    server = await maxq.start()
    flow_dir = add_scheduled(server, "redo", HOURLY)
    (flow_dir / "FAIL_AT").write_text("2026-12-03T01:00:00Z")
    span = {"from": DAY, "to": DAY + 2 * HOUR}
    status, first = await server.post("/flows/redo/backfills", span)
    done = await _wait_backfill(server, first["id"])
    assert done["counts"] == {"completed": 2, "failed": 1}
    status, again = await server.post("/flows/redo/backfills", span)
    assert status == 201 and again["runs"] == [] and again["status"] == "completed"
    assert again["skipped"] == [DAY, DAY + HOUR, DAY + 2 * HOUR]
    (flow_dir / "FAIL_AT").unlink()
    status, failed = await server.post("/flows/redo/backfills",
                                       {**span, "reprocess": "failed"})
    assert [r["scheduledAt"] for r in failed["runs"]] == [DAY + HOUR]
    assert failed["skipped"] == [DAY, DAY + 2 * HOUR]
    await _wait_backfill(server, failed["id"])
    status, dry = await server.post("/flows/redo/backfills", {**span, "reprocess": "failed"})
    assert dry["runs"] == []
    status, every = await server.post("/flows/redo/backfills", {**span, "reprocess": "all"})
    assert len(every["runs"]) == 3 and every["skipped"] == []
    await _wait_backfill(server, every["id"])


async def test_backfill_dry_run_creates_nothing(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "plan", HOURLY)
    status, body = await server.post("/flows/plan/backfills", {
        "from": DAY + 1, "to": DAY + 2 * HOUR, "dryRun": True})
    assert status == 200, body
    assert body["id"] is None and body["flowName"] == "plan"
    assert [r["scheduledAt"] for r in body["runs"]] == [DAY + HOUR, DAY + 2 * HOUR]
    await sleep(reactor, 0.3)
    assert await runs_of(server, "plan") == []
    status, listed = await server.get("/flows/plan/backfills")
    assert listed["backfills"] == []


async def test_backfill_cancel_removes_runs_not_started(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "long", HOURLY, sleep=3)
    status, body = await server.post("/flows/long/backfills",
                                     {"from": DAY, "to": DAY + 4 * HOUR})
    assert status == 201
    first = body["runs"][0]["id"]
    await server.wait_run(first, {"running"})
    status, cancelled = await server.post(f"/backfills/{body['id']}/cancel")
    assert status == 200 and cancelled["status"] == "cancelled"
    assert [r["id"] for r in cancelled["runs"]] == [first]
    for run in body["runs"][1:]:
        assert_error(await server.get(f"/runs/{run['id']}"), 404, "RUN_NOT_FOUND")
    run = await server.wait_run(first)
    assert run["status"] == "completed"
    status, again = await server.post(f"/backfills/{body['id']}/cancel")
    assert status == 200 and again["status"] == "cancelled"
    assert again["counts"] == {"completed": 1}


async def test_backfill_refusals(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "hourly", HOURLY)
    add_scheduled(server, "fast", 'schedule: "@every 1s"\npaused: true\n')
    server.flows.add("plain", "exit 0\n")
    add_scheduled(server, "broken", 'schedule: "nonsense"\n')
    ok = {"from": DAY, "to": DAY + HOUR}
    assert_error(await server.post("/flows/nope/backfills", ok), 404, "FLOW_NOT_FOUND")
    assert_error(await server.post("/flows/plain/backfills", ok), 400, "NO_SCHEDULE")
    err = assert_error(await server.post("/flows/broken/backfills", ok), 400, "NO_SCHEDULE")
    assert err["details"]["configError"]
    assert_error(await server.post("/flows/fast/backfills",
                                   {"from": DAY, "to": DAY + 1001 * 1000}),
                 400, "TOO_MANY_RUNS")
    for bad in [{}, {"from": DAY}, {"from": DAY + HOUR, "to": DAY},
                {"from": "yesterday", "to": DAY}, {**ok, "reprocess": "some"},
                {**ok, "maxActiveRuns": 0}, {**ok, "maxActiveRuns": True},
                {**ok, "dryRun": "yes"}, {**ok, "extra": 1}, [ok]]:
        assert_error(await server.post("/flows/hourly/backfills", bad), 400,
                     "VALIDATION_ERROR")
    assert_error(await server.post("/flows/hourly/backfills", raw=b"{nope"), 400,
                 "INVALID_JSON")
    assert await runs_of(server, "hourly") == []
    status, listed = await server.get("/flows/hourly/backfills")
    assert listed["backfills"] == []
    assert_error(await server.get("/flows/nope/backfills"), 404, "FLOW_NOT_FOUND")
    assert_error(await server.get("/backfills/nope"), 404, "BACKFILL_NOT_FOUND")
    assert_error(await server.post("/backfills/nope/cancel"), 404, "BACKFILL_NOT_FOUND")
    # Exactly 1000 fire times is allowed.
    status, body = await server.post("/flows/fast/backfills",
                                     {"from": DAY, "to": DAY + 999_000, "dryRun": True})
    assert status == 200 and len(body["runs"]) == 1000
