"""
The rules of SPEC §5 through real HTTP, on both backends: overlap (skip,
queue, allow) and catch-up after downtime (none, latest, all, the window),
each skipped fire time logged with its reason.
"""

from __future__ import annotations

import time

import pytest

from .schedule_support import (
    add_scheduled, db, intervals_overlap, runs_of, sleep, wait_phase, wait_runs,
)


async def _log(server, flow):
    status, body = await server.get(f"/flows/{flow}/schedule/log?limit=1000")
    assert status == 200, body
    return body["entries"]


async def test_overlap_skip_makes_no_run_while_one_is_unfinished(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "slow", 'schedule: "@every 1s"\n', sleep=2.2)
    await wait_runs(server, "slow", 2, timeout=20, finished=True)
    await server.post("/flows/slow/schedule/pause")
    runs = [r for r in await runs_of(server, "slow")]
    finished = [r for r in runs if r["status"] == "completed"]
    assert not intervals_overlap(finished)
    log = await _log(server, "slow")
    skipped = [e for e in log if e["action"] == "skipped"]
    assert skipped and all(e["reason"] == "overlap" for e in skipped)
    fired = {e["scheduledAt"] for e in log if e["action"] == "fired"}
    assert fired == {r["scheduledAt"] for r in runs}
    # No fire time is both run and skipped.
    assert not fired & {e["scheduledAt"] for e in skipped}


async def test_overlap_queue_runs_every_fire_time_one_after_another(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "queued", 'schedule: "@every 1s"\noverlap: queue\n', sleep=1.4)
    await wait_runs(server, "queued", 3, timeout=20, finished=True)
    await server.post("/flows/queued/schedule/pause")
    runs = await runs_of(server, "queued")
    times = [r["scheduledAt"] for r in runs]
    # Every fire time from the first has its run (none skipped).
    assert times == list(range(times[0], times[-1] + 1000, 1000))
    done = [r for r in runs if r["status"] == "completed"]
    assert not intervals_overlap(done)
    started = sorted((r for r in done), key=lambda r: r["startedAt"])
    assert [r["scheduledAt"] for r in started] == sorted(r["scheduledAt"] for r in done)
    assert not [e for e in await _log(server, "queued") if e["action"] == "skipped"]
    # The ones waiting are pending and are not started.
    waiting = [r for r in runs if r["status"] == "pending"]
    assert all(r["startedAt"] is None for r in waiting)


async def test_overlap_allow_starts_at_once(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "wide", 'schedule: "@every 1s"\noverlap: allow\n', sleep=2.5)

    async def two_running():
        runs = await runs_of(server, "wide", status="running")
        return runs if len(runs) >= 2 else None

    await server.wait_for(two_running, timeout=15, what="two runs at once")


async def _downtime(maxq, reactor, tmp_path, yaml, missed_s):
    """
    A server sees the schedule, stops; its watermark is moved back by
    C{missed_s} seconds (as if every server had been down that long);
    then a new server starts on the same database.
    """
    server = await maxq.start(sqlite_path=tmp_path / "shared.db")
    root = server.config.flows_root
    add_scheduled(server, "nightly", yaml)

    async def seen():
        rows = db(server, "SELECT watermark FROM schedules WHERE flow_name = 'nightly'")
        return rows or None

    await server.wait_for(seen, what="the schedule seen")
    await server.service.stopService()
    # Away from a fire time (every 10 s), so none is on time at the start.
    await wait_phase(reactor, 10, 4.0, 6.0)
    now = int(time.time() * 1000)
    db(server, "UPDATE schedules SET watermark = ? WHERE flow_name = 'nightly'",
       now - missed_s * 1000)
    db(server, "DELETE FROM schedule_log")
    again = await maxq.start(flows_root=root, sqlite_path=tmp_path / "shared.db")
    missed = [t for t in range((now - missed_s * 1000) // 10000 * 10000 + 10000,
                               now + 1, 10000)]
    return again, missed


async def _settled_log(server):
    async def logged():
        log = await _log(server, "nightly")
        return log if log else None

    return await server.wait_for(logged, what="the catch-up logged")


async def test_catchup_none_runs_nothing_missed(maxq, reactor, tmp_path):
    server, missed = await _downtime(
        maxq, reactor, tmp_path, 'schedule: "@every 10s"\ncatchup: none\n', 60)
    log = await _settled_log(server)
    skipped = sorted(e["scheduledAt"] for e in log if e["action"] == "skipped")
    assert skipped == missed
    assert {e["reason"] for e in log if e["action"] == "skipped"} == {"catchup_none"}
    assert [r for r in await runs_of(server, "nightly") if r["scheduledAt"] in missed] == []


async def test_catchup_latest_runs_the_most_recent_missed(maxq, reactor, tmp_path):
    server, missed = await _downtime(
        maxq, reactor, tmp_path, 'schedule: "@every 10s"\n', 60)
    runs = await wait_runs(server, "nightly", 1)
    assert runs[0]["scheduledAt"] == missed[-1] and runs[0]["trigger"] == "schedule"
    log = await _log(server, "nightly")
    assert sorted(e["scheduledAt"] for e in log if e["action"] == "skipped") == missed[:-1]
    assert {e["reason"] for e in log if e["action"] == "skipped"} == {"catchup_latest"}


async def test_catchup_all_runs_each_inside_the_window_oldest_first(
        maxq, reactor, tmp_path):
    server, missed = await _downtime(
        maxq, reactor, tmp_path,
        'schedule: "@every 10s"\ncatchup: all\ncatchupWindow: 35s\n', 60)
    now = int(time.time() * 1000)
    inside = [t for t in missed if t >= now - 35_000 - 1500]
    runs = await wait_runs(server, "nightly", len(inside) - 1, finished=True)
    runs = [r for r in await runs_of(server, "nightly") if r["scheduledAt"] in missed]
    got = sorted(r["scheduledAt"] for r in runs)
    assert set(got) <= set(missed)
    assert len(got) in (len(inside), len(inside) - 1)
    # Oldest first: in the order they started.
    started = sorted((r for r in runs if r["startedAt"]), key=lambda r: r["startedAt"])
    assert [r["scheduledAt"] for r in started] == got[:len(started)]
    log = await _log(server, "nightly")
    outside = sorted(e["scheduledAt"] for e in log if e["action"] == "skipped")
    assert outside == [t for t in missed if t not in got]
    assert {e["reason"] for e in log if e["action"] == "skipped"} == \
        {"outside_catchup_window"}
    done = [r for r in await runs_of(server, "nightly") if r["status"] == "completed"]
    assert not intervals_overlap(done)


async def test_two_servers_on_one_database_make_one_run_per_fire_time(
        maxq, reactor, tmp_path):
    if maxq.backend != "postgres":
        pytest.skip("one SQLite file belongs to one server")
    first = await maxq.start()
    second = await maxq.start(flows_root=first.config.flows_root)
    add_scheduled(first, "tick", 'schedule: "@every 1s"\n')
    await wait_runs(first, "tick", 5, finished=True)
    await first.post("/flows/tick/schedule/pause")
    await sleep(reactor, 0.5)
    runs = await runs_of(first, "tick")
    times = [r["scheduledAt"] for r in runs]
    assert len(times) == len(set(times))
    assert times == list(range(times[0], times[-1] + 1000, 1000))
    assert second.api != first.api


async def test_a_queued_run_paused_and_resumed_still_starts(maxq, reactor):
    server = await maxq.start()
    add_scheduled(server, "q", 'schedule: "@every 1s"\noverlap: queue\n', sleep=1.5)

    async def one_queued():
        runs = await runs_of(server, "q", status="pending")
        return [r for r in runs if r["startedAt"] is None] or None

    (queued, *_) = await server.wait_for(one_queued, what="a queued run")
    await server.post("/flows/q/schedule/pause")
    status, body = await server.post(f"/runs/{queued['id']}/pause")
    assert status == 200, body

    async def all_others_ended():
        runs = await runs_of(server, "q")
        return all(r["status"] in ("completed", "failed") for r in runs
                   if r["id"] != queued["id"])

    # The runs queued after it go first: a paused run is not started.
    await server.wait_for(all_others_ended, timeout=30, what="the other runs ended")
    status, body = await server.post(f"/runs/{queued['id']}/resume")
    assert status == 200, body
    await server.post("/flows/q/schedule/resume")
    run = await server.wait_run(queued["id"], timeout=20)
    assert run["status"] == "completed"
