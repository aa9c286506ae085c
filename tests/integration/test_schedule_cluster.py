"""
Two MaxQ servers, each a real process, on one PostgreSQL database with a
C{@every 1s} schedule for about 20 s; one is killed with SIGKILL half-way.
Every fire time from the first to the last has exactly one run, none is
missing, and every run completes (the killed server's are taken back).
"""

from __future__ import annotations

import pytest
from twisted.internet import task

from .subprocess_server import subprocess_servers  # noqa: F401 (fixture)

FAST_CLUSTER = {
    "MAXQ_WORKER_HEARTBEAT_MS": "200",
    "MAXQ_WORKER_TIMEOUT_MS": "1500",
}
FLOW = 'echo "$MAXQ_SCHEDULED_AT $MAXQ_RUN_ID" >> "$OUT/calls.log"\nsleep 0.3\n'


async def _pause(reactor, seconds):
    await task.deferLater(reactor, seconds, lambda: None)


@pytest.mark.long
async def test_every_second_across_a_kill_makes_one_run_per_fire_time(
        postgres_schema, subprocess_servers, tmp_path, reactor):  # noqa: F811
    _server, _schema, url = postgres_schema
    out = tmp_path / "out"
    out.mkdir()

    def make(name):
        return subprocess_servers(name, env={"MAXQ_DATABASE_URL": url,
                                             "MAXQ_WORKER_ID": name, **FAST_CLUSTER})

    a, b = make("a"), make("b")
    await a.start()
    await b.start()
    a.flows.add("tick", f'OUT="{out}"\n' + FLOW,
                flow_yaml='schedule: "@every 1s"\noverlap: allow\n')
    await _pause(reactor, 9)
    await a.kill()
    await _pause(reactor, 11)
    status, entry = await b.post("/flows/tick/schedule/pause")
    assert status == 200 and entry["paused"] is True

    async def all_finished():
        rows = b.query("SELECT count(*) FROM runs WHERE status NOT IN "
                       "('completed', 'failed')")
        return rows[0][0] == 0

    await b.wait_for(all_finished, timeout=30, what="every run finished")
    rows = b.query("SELECT scheduled_at, status, trigger FROM runs ORDER BY scheduled_at")
    times = [r[0] for r in rows]
    assert len(times) >= 15, rows
    assert len(times) == len(set(times)), "a fire time made two runs"
    assert times == list(range(times[0], times[-1] + 1000, 1000)), "a fire time was missed"
    assert {r[1] for r in rows} == {"completed"}
    assert {r[2] for r in rows} == {"schedule"}
    log = b.query("SELECT count(*) FROM schedule_log WHERE action = 'skipped'")
    assert log == [(0,)]
