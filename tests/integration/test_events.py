"""
SPEC §7 events, through real HTTP on both backends: the history of a run is
its state changes in order, streams replay then go live without losing or
repeating an event, retention resets old cursors, slow clients are cut off,
clients that hang up are forgotten, script tokens see only their run.
"""

from __future__ import annotations

import socket

from twisted.internet import defer

from .api_support import OK_SH, FAIL_SH, stage, staged_flow_sh, step
from .sse_support import all_events, open_stream, wait_until

TWO_STAGES = staged_flow_sh({
    "": stage("first", [step("a", "ok"), step("b", "ok", dependsOn=["a"])]),
    "first": stage("second", [step("c", "fail", max_retries=1)], final=True),
})


def add_flow(server, name="ev"):
    server.flows.add(name, TWO_STAGES, steps={"ok": "echo hello from $MAXQ_STEP_ID\n",
                                              "fail": FAIL_SH})


def transitions(events, kind, key):
    return [(e[key], e.get("previousStatus"), e["status"]) for e in events
            if e["type"] == kind]


async def test_run_history_is_its_state_changes_in_order(maxq):
    server = await maxq.start()
    add_flow(server)
    run = await server.trigger("ev")
    await server.wait_run(run["id"])
    status, page = await server.get(f"/runs/{run['id']}/events?limit=1000")
    assert status == 200, page
    events = page["events"]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert page["lastId"] == ids[-1]
    assert all(e["runId"] == run["id"] and e["flowName"] == "ev" for e in events)
    runs = [(e.get("previousStatus"), e["status"]) for e in events if e["type"] == "run"]
    assert runs == [(None, "pending"), ("pending", "running"), ("running", "failed")]
    steps = {}
    for e in events:
        if e["type"] == "step":
            steps.setdefault(e["stepId"], []).append((e.get("previousStatus"), e["status"]))
    assert steps["a"] == [(None, "pending"), ("pending", "running"), ("running", "completed")]
    assert steps["c"] == [(None, "pending"), ("pending", "running"), ("running", "pending"),
                          ("pending", "running"), ("running", "failed")]
    c_events = [e for e in events if e["type"] == "step" and e["stepId"] == "c"]
    assert c_events[2]["data"]["retryCount"] == 1 and c_events[2]["data"]["exitCode"] == 1
    assert c_events[-1]["data"]["attempt"] == 2
    assert c_events[-1]["data"]["error"] == {"reason": "exit_code", "exitCode": 1}
    stages = transitions(events, "stage", "stage")
    assert stages == [("first", None, "running"), ("first", "running", "completed"),
                      ("second", None, "running"), ("second", "running", "failed")]
    # The final state matches the last event of each step.
    for s in await server.steps(run["id"]):
        assert steps[s["id"]][-1][1] == s["status"]
    logs = [e for e in events if e["type"] == "log"]
    assert any(e["data"]["message"] == "run completed" or "failed" in e["data"]["message"]
               for e in logs)


async def test_fields_patch_and_log_events(maxq):
    server = await maxq.start()
    server.flows.add("noop", "exit 0\n")
    run = await server.trigger("noop")
    await server.wait_run(run["id"])
    status, _ = await server.patch(f"/runs/{run['id']}", {"name": "renamed"})
    assert status == 200
    status, _ = await server.post(f"/runs/{run['id']}/logs", {
        "entityType": "run", "level": "info", "message": "hello world"})
    assert status == 201
    events = await all_events(server, f"/runs/{run['id']}/events")
    update = [e for e in events if e["type"] == "run" and e["data"].get("change") == "updated"]
    assert update and update[0]["data"]["keys"] == ["name"]
    assert events[-1]["type"] == "log" and events[-1]["data"]["message"] == "hello world"
    status, body = await server.get("/events?type=bogus")
    assert status == 400 and body["code"] == "VALIDATION_ERROR"
    only_logs = await all_events(server, "/events", f"&type=log&runId={run['id']}")
    assert only_logs and {e["type"] for e in only_logs} == {"log"}


async def test_sse_replays_then_goes_live_across_reconnects(maxq):
    server = await maxq.start()
    # Steps that take a moment, so that the reconnects fall inside the run.
    server.flows.add("ev", TWO_STAGES, steps={"ok": "sleep 0.3; echo hi $MAXQ_STEP_ID\n",
                                              "fail": FAIL_SH})
    first = await open_stream(server, "/events?after=0")
    assert first.status == 200
    assert first.headers["content-type"].startswith("text/event-stream")
    assert first.headers["cache-control"] == "no-cache"
    assert first.headers["x-accel-buffering"] == "no"
    run = await server.trigger("ev")
    await wait_until(server.reactor, lambda: len(first.events()) >= 3, what="first events")
    first.transport.loseConnection()
    seen = list(first.frames)
    cursor = int([f for f in seen if "id" in f][-1]["id"])
    ended = []
    defer.ensureDeferred(server.wait_run(run["id"])).addCallback(ended.append)
    # Reconnect several times during the run, each from the last id seen
    # (on a slow machine the run may end first: then what is left of it
    # comes in the last stream below).
    for _ in range(3):
        client = await open_stream(server, "/events", last_event_id=cursor)
        await wait_until(server.reactor, lambda: client.ids() or ended, timeout=60,
                         what="events after reconnecting")
        client.transport.loseConnection()
        await client.closed
        seen.extend(client.frames)
        if not client.ids():
            break
        cursor = client.ids()[-1]
    await server.wait_run(run["id"])
    last = await open_stream(server, "/events", last_event_id=cursor)
    expected = await all_events(server)
    await wait_until(server.reactor,
                     lambda: (last.ids() or [cursor])[-1] >= expected[-1]["id"],
                     what="the rest of the history")
    last.transport.loseConnection()
    seen.extend(last.frames)
    assert seen[0] == {"retry": "2000"}
    got = [int(f["id"]) for f in seen if "id" in f]
    assert got == [e["id"] for e in expected]
    assert [f["json"] for f in seen if "id" in f] == expected


async def test_script_token_sees_only_its_own_run(maxq):
    server = await maxq.start(api_keys=("operator-key",))
    server.flows.add("noop", "exit 0\n")
    one = await server.trigger("noop")
    two = await server.trigger("noop")
    await server.wait_run(one["id"])
    await server.wait_run(two["id"])
    token = server.service.api.credentials.script_token(one["id"])
    status, page = await server.get("/events?limit=1000",
                                    headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    assert page["events"] and {e["runId"] for e in page["events"]} == {one["id"]}
    status, body = await server.get(f"/runs/{two['id']}/events",
                                    headers={"Authorization": f"Bearer {token}"})
    assert status == 403
    stream = await open_stream(server, "/events?after=0", token=token)
    await wait_until(server.reactor, lambda: stream.events(), what="own events")
    stream.transport.loseConnection()
    assert {e["runId"] for e in stream.events()} == {one["id"]}
    status, _ = await server.get("/events", headers={"Authorization": "Bearer nope"})
    assert status == 401


async def test_retention_prunes_and_old_cursors_get_a_reset(maxq):
    server = await maxq.start(env={"MAXQ_EVENT_RETENTION": "2s"})
    server.flows.add("noop", "exit 0\n")
    run = await server.trigger("noop")
    await server.wait_run(run["id"])
    status, page = await server.get("/events?after=0")
    first_id = page["events"][0]["id"]

    async def pruned():
        status, page = await server.get("/events?after=0")
        return page if page.get("reset") else None

    page = await server.wait_for(pruned, timeout=45, what="pruning")
    assert all(e["id"] > first_id for e in page["events"])
    later = await server.trigger("noop")
    await server.wait_run(later["id"])
    stream = await open_stream(server, "/events", last_event_id=first_id)
    await wait_until(server.reactor, lambda: len(stream.frames) >= 3, what="frames")
    stream.transport.loseConnection()
    assert stream.frames[0] == {"retry": "2000"}
    assert stream.frames[1]["event"] == "reset"
    assert stream.frames[1]["json"]["reason"] == "retention"
    ids = stream.ids()
    assert ids == sorted(ids) and ids[0] > first_id
    # A cursor within retention gets no reset.
    status, page = await server.get(f"/events?after={ids[-1]}")
    assert "reset" not in page


async def test_slow_client_is_cut_off_and_resumes(maxq):
    server = await maxq.start()
    server.service.events.subscriptions.clear()
    server.flows.add("chatty", "exit 0\n")
    slow = await open_stream(server, "/events")
    # Stop reading: the kernel's buffers fill, then the server's bounded
    # backlog, then it hangs up.  A small receive buffer keeps the first
    # part short; how much the loopback's send buffer takes still varies
    # (Linux grows it up to a few MiB), so post until the server gives up.
    slow.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.transport.pauseProducing()
    big = "x" * 20000
    run = await server.trigger("chatty")
    deadline = server.reactor.seconds() + 40
    i = 0
    while server.service.events.subscriptions:
        assert server.reactor.seconds() < deadline, \
            f"the slow stream was still served after {i} posts of 20 kB"
        status, _ = await server.post(f"/runs/{run['id']}/logs", {
            "entityType": "run", "level": "info", "message": f"{i} {big}"})
        assert status == 201
        i += 1
    slow.transport.resumeProducing()
    await wait_until(server.reactor, lambda: slow.lost, what="the slow stream's end")
    # Whatever it got, it resumes from its last id and misses nothing.
    cursor = slow.ids()[-1] if slow.ids() else 0
    status, page = await server.get(f"/events?after={cursor}&limit=1000")
    assert page["events"] and page["events"][0]["id"] > cursor


async def test_clients_that_hang_up_are_forgotten(maxq):
    server = await maxq.start()
    hub = server.service.events
    before = len(hub.subscriptions)
    streams = [await open_stream(server, "/events") for _ in range(3)]
    await wait_until(server.reactor, lambda: all(s.frames for s in streams),
                     what="every stream's first frame")
    assert len(hub.subscriptions) == before + 3
    for stream in streams:
        stream.transport.loseConnection()
        await stream.closed
    await wait_until(server.reactor, lambda: len(hub.subscriptions) == before,
                     what="the hub to forget the streams")


async def test_stream_on_one_server_sees_steps_run_by_another(maxq):
    if maxq.backend != "postgres":
        import pytest
        pytest.skip("several servers share a database on PostgreSQL only")
    a = await maxq.start(worker_id="server-a", max_concurrent_steps=1)
    b = await maxq.start(flows_root=a.flows.root, worker_id="server-b",
                         max_concurrent_steps=4)
    steps = [step(f"s{i}", "nap") for i in range(8)]
    a.flows.add("spread", staged_flow_sh({"": stage("work", steps, final=True)}),
                steps={"nap": "sleep 0.3\n"})
    stream = await open_stream(a, "/events")
    run = await b.trigger("spread")
    await b.wait_run(run["id"])
    expected = await all_events(a, f"/runs/{run['id']}/events")
    await wait_until(a.reactor, lambda: stream.ids() and stream.ids()[-1] >= expected[-1]["id"],
                     what="every event on server A")
    stream.transport.loseConnection()
    got = [e for e in stream.events() if e["runId"] == run["id"]]
    assert got == expected
    workers = {e["data"].get("workerId") for e in got if e["type"] == "step"
               and e["status"] == "running"}
    assert "server-b" in workers


async def test_control_changes_are_events_in_order(maxq):
    from .api_support import start_held

    server = await maxq.start()
    held = await start_held(server)
    run_id = held.run_id
    status, _ = await server.post(f"/runs/{run_id}/pause")
    assert status == 200
    status, _ = await server.post(f"/runs/{run_id}/resume")
    assert status == 200
    await server.wait_step(run_id, "wait", {"running"})
    status, _ = await server.post(f"/runs/{run_id}/abort")
    assert status == 200
    held.release()
    status, _ = await server.post(f"/runs/{run_id}/retry")
    assert status == 200
    run = await server.wait_run(run_id)
    events = await all_events(server, f"/runs/{run_id}/events")
    runs = [(e.get("previousStatus"), e["status"]) for e in events if e["type"] == "run"]
    assert runs == [(None, "pending"), ("pending", "running"), ("running", "paused"),
                    ("paused", "running"), ("running", "failed"), ("failed", "running"),
                    ("running", run["status"])]
    wait = [(e.get("previousStatus"), e["status"]) for e in events
            if e["type"] == "step" and e["stepId"] == "wait"]
    assert wait[:6] == [(None, "pending"), ("pending", "running"), ("running", "pending"),
                        ("pending", "running"), ("running", "failed"), ("failed", "pending")]
    aborted = [e for e in events if e["type"] == "step" and e["status"] == "failed"]
    assert aborted[0]["data"]["error"] == {"reason": "aborted"}
    stages = [(e.get("previousStatus"), e["status"]) for e in events if e["type"] == "stage"]
    assert stages[:3] == [(None, "running"), ("running", "failed"), ("failed", "running")]
