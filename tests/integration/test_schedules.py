"""
Schedules through real HTTP with real flows (SPEC §5), on both backends:
fires, the entry and its routes, pause and resume, reloading flow.yaml,
bad values, and what flow.sh is told.
"""

from __future__ import annotations

from .api_support import assert_error
from .schedule_support import (
    add_scheduled, calls, db, runs_of, sleep, wait_runs,
)

ENTRY_KEYS = {"flowName", "expressions", "timezone", "paused", "nextAt", "lastAt",
              "lastRunId", "catchup", "catchupWindowMs", "overlap", "description"}


async def test_every_second_fires_runs_with_trigger_and_fire_time(maxq, reactor):
    server = await maxq.start()
    flow_dir = add_scheduled(server, "tick", 'schedule: "@every 1s"\ninput: {"a": 1}\n')
    runs = await wait_runs(server, "tick", 3, finished=True)
    times = [r["scheduledAt"] for r in runs]
    assert all(r["trigger"] == "schedule" for r in runs)
    assert all(t % 1000 == 0 for t in times)
    assert times == sorted(set(times))
    status, run = await server.get(f"/runs/{runs[0]['id']}")
    assert status == 200
    assert run["trigger"] == "schedule" and run["scheduledAt"] == times[0]
    assert run["input"] == {"a": 1}
    assert run["status"] == "completed"
    # flow.sh got MAXQ_TRIGGER and MAXQ_SCHEDULED_AT (ISO 8601 UTC).
    seen = {c[2]: c for c in calls(flow_dir)}
    call = seen[runs[0]["id"]]
    assert call[0] == "schedule"
    assert call[1].endswith("Z") and len(call[1]) == len("2026-12-03T06:00:00Z")
    from datetime import datetime, timezone
    at = datetime.strptime(call[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert int(at.timestamp() * 1000) == times[0]
    # A run triggered by hand says so.
    manual = await server.trigger("tick")
    assert manual["trigger"] == "api" and manual["scheduledAt"] is None
    await server.wait_run(manual["id"])
    assert {c[2]: c for c in calls(flow_dir)}[manual["id"]][:2] == ["api", "-"]


async def test_entry_list_and_not_found(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "weekdays",
                  'schedule: "0 6 * * 1-5"\ntimezone: Europe/Berlin\n'
                  'catchup: all\ncatchupWindow: 2h\noverlap: queue\n')
    add_scheduled(server, "many", 'schedule: ["@hourly", "30 0 * * *"]\n')
    server.flows.add("plain", "exit 0\n")

    async def listed():
        status, body = await server.get("/schedules")
        assert status == 200
        return body if len(body["schedules"]) == 2 else None

    body = await server.wait_for(listed, what="two schedules listed")
    entries = {e["flowName"]: e for e in body["schedules"]}
    entry = entries["weekdays"]
    assert ENTRY_KEYS <= set(entry)
    assert entry["expressions"] == ["0 6 * * 1-5"]
    assert entry["timezone"] == "Europe/Berlin"
    assert entry["catchup"] == "all" and entry["catchupWindowMs"] == 7_200_000
    assert entry["overlap"] == "queue" and entry["paused"] is False
    assert "06:00" in entry["description"] and "Monday" in entry["description"]
    assert entry["nextAt"] > 0 and entry["lastAt"] is None and entry["lastRunId"] is None
    assert entries["many"]["expressions"] == ["@hourly", "30 0 * * *"]
    assert entries["many"]["catchup"] == "latest" and entries["many"]["overlap"] == "skip"
    assert entries["many"]["catchupWindowMs"] == 24 * 3600 * 1000
    assert entries["many"]["nextAt"] % 1800_000 == 0

    status, one = await server.get("/flows/weekdays/schedule")
    assert status == 200 and one["flowName"] == "weekdays" and ENTRY_KEYS <= set(one)
    assert_error(await server.get("/flows/nope/schedule"), 404, "FLOW_NOT_FOUND")
    assert_error(await server.get("/flows/plain/schedule"), 404, "SCHEDULE_NOT_FOUND")
    status, flow = await server.get("/flows/weekdays")
    assert flow["schedule"] == "0 6 * * 1-5" and "configError" not in flow


async def test_pause_and_resume_are_stored_and_idempotent(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "tick", 'schedule: "@every 1s"\n')
    await wait_runs(server, "tick", 1)
    for _ in range(2):
        status, entry = await server.post("/flows/tick/schedule/pause")
        assert status == 200 and entry["paused"] is True and entry["nextAt"] is None
    before = len(await runs_of(server, "tick"))
    await sleep(reactor, 2.5)
    assert len(await runs_of(server, "tick")) == before
    status, listed = await server.get("/schedules")
    assert listed["schedules"][0]["paused"] is True
    # Resuming owes nothing of the paused period: the next run is for a
    # fire time after the resume.
    resumed_at = int(reactor.seconds() * 1000)
    for _ in range(2):
        status, entry = await server.post("/flows/tick/schedule/resume")
        assert status == 200 and entry["paused"] is False and entry["nextAt"] is not None
    runs = await wait_runs(server, "tick", before + 1)
    assert all(r["scheduledAt"] > resumed_at - 1000 for r in runs[before:])
    assert_error(await server.post("/flows/nope/schedule/pause"), 404, "FLOW_NOT_FOUND")
    server.flows.add("plain", "exit 0\n")
    assert_error(await server.post("/flows/plain/schedule/resume"), 404,
                 "SCHEDULE_NOT_FOUND")
    status, log = await server.get("/flows/tick/schedule/log?limit=1000")
    actions = [e["action"] for e in log["entries"]]
    assert actions.count("paused") == 1 and actions.count("resumed") == 1
    assert "fired" in actions


async def test_paused_survives_a_restart_and_api_state_wins_over_flow_yaml(
        maxq, reactor, tmp_path):
    server = await maxq.start(sqlite_path=tmp_path / "shared.db")
    root = server.config.flows_root
    add_scheduled(server, "tick", 'schedule: "@every 1s"\npaused: true\n')
    status, entry = await server.wait_for(
        lambda: server.get("/flows/tick/schedule"), what="the schedule")
    assert entry["paused"] is True
    await sleep(reactor, 2.2)
    assert await runs_of(server, "tick") == []
    status, entry = await server.post("/flows/tick/schedule/resume")
    assert entry["paused"] is False
    await wait_runs(server, "tick", 1)
    status, entry = await server.post("/flows/tick/schedule/pause")
    await server.service.stopService()
    # flow.yaml now says "not paused": the stored state wins.
    (root / "tick" / "flow.yaml").write_text('schedule: "@every 1s"\npaused: false\n')
    again = await maxq.start(flows_root=root, sqlite_path=tmp_path / "shared.db")
    before = len(await runs_of(again, "tick"))
    await sleep(reactor, 2.2)
    status, entry = await again.get("/flows/tick/schedule")
    assert entry["paused"] is True
    assert len(await runs_of(again, "tick")) == before


async def test_flow_yaml_edits_new_and_removed_flows_apply_without_restart(
        maxq, reactor):
    server = await maxq.start()
    flow_dir = server.flows.add("later", "exit 0\n")
    assert_error(await server.get("/flows/later/schedule"), 404, "SCHEDULE_NOT_FOUND")
    (flow_dir / "flow.yaml").write_text('schedule: "@every 1s"\n')
    await wait_runs(server, "later", 1, timeout=5)
    # A new expression is used within 2 s.
    (flow_dir / "flow.yaml").write_text('schedule: "0 0 1 1 *"\ntimezone: Asia/Tokyo\n')

    async def edited():
        status, entry = await server.get("/flows/later/schedule")
        return entry if entry.get("timezone") == "Asia/Tokyo" else None

    entry = await server.wait_for(edited, timeout=5, what="the edit seen")
    assert entry["expressions"] == ["0 0 1 1 *"]
    assert entry["nextAt"] - int(reactor.seconds() * 1000) > 3600_000
    await sleep(reactor, 1.5)
    count = len(await runs_of(server, "later"))
    await sleep(reactor, 2.0)
    assert len(await runs_of(server, "later")) == count
    # Removed: no schedule any more.
    (flow_dir / "flow.yaml").unlink()

    async def removed():
        status, _ = await server.get("/flows/later/schedule")
        return status == 404

    await server.wait_for(removed, timeout=5, what="the schedule removed")
    # A new flow directory with a schedule fires without a restart.
    add_scheduled(server, "fresh", 'schedule: "@every 1s"\n')
    await wait_runs(server, "fresh", 1, timeout=5)


async def test_bad_schedule_values_are_config_errors_and_the_flow_still_runs(
        maxq, reactor):
    server = await maxq.start()
    bad = {
        "expr": 'schedule: "61 * * * *"\n',
        "fields": 'schedule: "* * * *"\n',
        "zone": 'schedule: "@daily"\ntimezone: Mars/Olympus\n',
        "every": 'schedule: "@every 500ms"\n',
        "alias": 'schedule: "@sometimes"\n',
        "catchup": 'schedule: "@daily"\ncatchup: maybe\n',
        "window": 'schedule: "@daily"\ncatchupWindow: forever\n',
        "overlap": 'schedule: "@daily"\noverlap: sometimes\n',
        "paused": 'schedule: "@daily"\npaused: perhaps\n',
    }
    for name, yaml in bad.items():
        add_scheduled(server, name, yaml)
    status, body = await server.get("/flows")
    assert status == 200
    listed = {f["name"]: f for f in body["flows"]}
    for name in bad:
        assert listed[name]["configError"], name
        status, flow = await server.get(f"/flows/{name}")
        assert status == 200 and flow["configError"], name
        err = assert_error(await server.get(f"/flows/{name}/schedule"), 404,
                           "SCHEDULE_NOT_FOUND")
        assert err["details"]["configError"], name
    status, schedules = await server.get("/schedules")
    assert schedules["schedules"] == []
    run = await server.trigger("expr")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed" and run["trigger"] == "api"
    # Fixed: it schedules.
    (server.config.flows_root / "expr" / "flow.yaml").write_text('schedule: "@every 1s"\n')
    await wait_runs(server, "expr", 2, timeout=5)
    assert db(server, "SELECT count(*) FROM runs WHERE trigger = 'schedule'")[0][0] >= 1


async def test_fires_are_counted_in_metrics_and_schedules_shown_in_health(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "counted", 'schedule: "@every 1s"\noverlap: skip\n')
    add_scheduled(server, "held", 'schedule: "@daily"\npaused: true\n')
    await wait_runs(server, "counted", 2, finished=True)

    async def health():
        status, body = await server.get("/health", prefix=False)
        found = body["services"].get("schedules")
        return found if found and found["count"] == 2 and found["paused"] == 1 else None

    found = await server.wait_for(health, what="two schedules, one paused, in /health")
    assert found["status"] == "healthy"
    status, text = await server.get("/metrics", prefix=False)
    assert status == 200
    fired = [line for line in text.splitlines()
             if line.startswith("maxq_schedule_fires_total{")
             and 'flow="counted"' in line and 'outcome="fired"' in line]
    assert len(fired) == 1 and float(fired[0].rsplit(" ", 1)[1]) >= 2


async def test_scheduled_runs_take_the_flows_priority(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "urgent", 'schedule: "@every 1s"\npriority: 7\n')
    runs = await wait_runs(server, "urgent", 1)
    status, run = await server.get(f"/runs/{runs[0]['id']}")
    assert status == 200 and run["trigger"] == "schedule" and run["priority"] == 7


async def test_what_a_schedule_does_is_an_event(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "evented", 'schedule: "@every 1s"\n')
    runs = await wait_runs(server, "evented", 2)
    status, _ = await server.post("/flows/evented/schedule/pause")
    assert status == 200
    status, page = await server.get("/events?type=schedule&flowName=evented&limit=1000")
    assert status == 200
    actions = [e["data"]["action"] for e in page["events"]]
    assert actions[0] == "created" and actions[-1] == "paused"
    fired = {e["runId"]: e["data"]["scheduledAt"] for e in page["events"]
             if e["data"]["action"] == "fired"}
    for run in runs:
        assert fired[run["id"]] == run["scheduledAt"]
    assert all(e["type"] == "schedule" and e["flowName"] == "evented"
               for e in page["events"])
