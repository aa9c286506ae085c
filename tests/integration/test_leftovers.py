"""
Terminating what a dead server left running (maxq.leftovers), on real
processes: only groups whose processes carry the interrupted work's
environment are touched.
"""

from __future__ import annotations

import os
import subprocess
import uuid

from maxq.leftovers import LeftoverProcesses, find_groups

from .conftest import pids_alive
from .exec_support import timed


def _spawn(env: dict[str, str], script: str = "sleep 30 & sleep 30; wait") -> subprocess.Popen:
    """
    A bash in a session (and group) of its own, with a child, like a step.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("MAXQ_")}
    return subprocess.Popen(["bash", "-c", script], env={**base, **env},
                            start_new_session=True)


def _reap(*procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, 9)
        p.wait(5)


def _group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(rest[2]) == pgid and rest[0] != "Z":
                found.append(int(entry))
    return found


async def _settled(reactor, pgid):
    from twisted.internet import task

    for _ in range(50):
        if len(_group(pgid)) >= 2:
            return
        await task.deferLater(reactor, 0.02, lambda: None)


@timed(20)
async def test_only_groups_with_the_work_s_environment_are_terminated(reactor):
    run = str(uuid.uuid4())
    mine = _spawn({"MAXQ_RUN_ID": run, "MAXQ_STEP_ID": "s1"})
    other_step = _spawn({"MAXQ_RUN_ID": run, "MAXQ_STEP_ID": "s2"})
    flow = _spawn({"MAXQ_RUN_ID": run})
    stranger = _spawn({})
    try:
        for p in (mine, other_step, flow, stranger):
            await _settled(reactor, p.pid)
        # A recorded group id that is someone else's is not ours to kill.
        assert find_groups([(run, "s1", stranger.pid)]) == {}
        leftovers = LeftoverProcesses(reactor, grace_ms=1000)
        killed = await leftovers.terminate([(run, "s1", mine.pid), (run, None, flow.pid)])
        assert killed == 2
        assert _group(mine.pid) == [] and _group(flow.pid) == []
        assert len(_group(other_step.pid)) >= 2, "another step's group is untouched"
        assert len(_group(stranger.pid)) >= 2
    finally:
        _reap(mine, other_step, flow, stranger)


@timed(20)
async def test_unrecorded_group_is_found_by_its_environment(reactor):
    run = str(uuid.uuid4())
    mine = _spawn({"MAXQ_RUN_ID": run, "MAXQ_STEP_ID": "s1"})
    try:
        await _settled(reactor, mine.pid)
        assert find_groups([(run, "s1", None)]) == {mine.pid: {(run, "s1")}}
        killed = await LeftoverProcesses(reactor, grace_ms=1000).terminate(
            [(run, "s1", None)])
        assert killed == 1
        assert _group(mine.pid) == []
    finally:
        _reap(mine)


@timed(20)
async def test_term_ignoring_leftover_is_killed_after_the_grace(reactor):
    run = str(uuid.uuid4())
    stubborn = _spawn({"MAXQ_RUN_ID": run, "MAXQ_STEP_ID": "s"},
                      "trap '' TERM; sleep 30 & wait; sleep 30")
    try:
        await _settled(reactor, stubborn.pid)
        start = reactor.seconds()
        killed = await LeftoverProcesses(reactor, grace_ms=300).terminate(
            [(run, "s", stubborn.pid)])
        assert killed == 1
        # SIGTERM was ignored: only the SIGKILL after the grace ended it.
        assert reactor.seconds() - start > 0.25
        assert pids_alive([stubborn.pid]) == []
    finally:
        _reap(stubborn)
