"""
Resource hygiene: 2,000 real step processes (20 runs x 100 steps, 8 at a
time) in one server leave no zombie children and no leaked descriptors in
this process (the server runs in-process, so its fds and children are ours).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from .exec_support import Scenario, children_of, fd_count, settle, stage, step, timed

RUNS = 20
STEPS = 100
# Descriptors that may legitimately appear between the two samples, none of
# which grows with the number of steps: the SQLite store opens its WAL
# checkpoint connection lazily, the first time the WAL has grown enough
# (observed: +2, the .db and .db-wal of that one connection), and one end of
# an HTTP connection whose close the reactor has not processed yet (treq runs
# with persistent=False, so every request opens and closes a connection).
# A per-step or per-run leak would show as tens or hundreds.
SLACK = 3


# The server's own descriptors and children are what is measured; the
# backend does not change them (test_server_hygiene covers 5,000 steps).
@pytest.mark.sqlite_only
@timed(60)
async def test_many_steps_leave_no_zombies_or_leaked_fds(maxq):
    server = await maxq.start(max_concurrent_steps=8)
    sc = Scenario(server, "h")
    ran = sc.out / "ran"
    sc.setup(
        plan={"start": stage("s", [step(f"t{i}", "t") for i in range(STEPS)], final=True)},
        raw_steps={"t": f'echo "$MAXQ_RUN_ID $MAXQ_STEP_ID" >> "{ran}"\n'},
    )
    # Warm up: one run brings every lazily created resource into being.
    warm = await sc.run(timeout=30)
    assert warm["status"] == "completed", warm
    ran.unlink()
    await _quiet(server)
    fds_before = fd_count()
    fd_list_before = _fd_targets()
    assert _zombies() == []

    run_ids = [await sc.trigger() for _ in range(RUNS)]

    async def all_done():
        status, body = await server.get("/runs?flowName=h&status=completed&limit=1")
        assert status == 200, body
        status_f, failed = await server.get("/runs?flowName=h&status=failed&limit=1")
        assert failed["pagination"]["total"] == 0, failed
        return body["pagination"]["total"] == RUNS + 1

    await server.wait_for(all_done, timeout=45, interval=0.2, what="all runs completed")

    lines = ran.read_text().split("\n")[:-1]
    assert len(lines) == RUNS * STEPS
    assert len(set(lines)) == RUNS * STEPS, "a step ran twice"
    assert {line.split()[0] for line in lines} == set(run_ids)

    await _quiet(server)
    zombies = _zombies()
    assert zombies == [], zombies
    fds_after = fd_count()
    assert fds_after <= fds_before + SLACK, (
        fds_before, fds_after, Counter(_fd_targets()) - Counter(fd_list_before))


def _zombies():
    return [pid for pid, state in children_of(os.getpid()) if state == "Z"]


def _fd_targets():
    result = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            result.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return result


async def _quiet(server, timeout: float = 10.0):
    """
    Wait until no live child process of ours is left (every step and flow
    process ended; zombies are checked by the caller), then give the reactor
    a moment to close connections.
    """
    async def no_children():
        return [pid for pid, state in children_of(os.getpid()) if state != "Z"] == []

    await server.wait_for(no_children, timeout, interval=0.05, what="no child processes")
    await settle(server.reactor, 0.2)
