"""
What a server that died (C{kill -9}, a crash, power loss) left running.

Its steps and flow scripts were in process groups of their own; they did
not die with it.  Before their work is put back to pending, whatever is
left of them is terminated, so that an old attempt never runs alongside the
new one.  A group is terminated only after checking that it is really
ours: one of its processes must carry the environment MaxQ gave that step
(C{MAXQ_RUN_ID} and C{MAXQ_STEP_ID}) or flow call (C{MAXQ_RUN_ID} and no
C{MAXQ_STEP_ID}).  The recorded process group id alone proves nothing: after
a reboot it may belong to anyone.

Linux only (C{/proc}); elsewhere nothing is found and nothing is killed.
No database and no HTTP here.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from twisted.internet import task
from twisted.logger import Logger

# (run_id, step_id or None for a flow call, recorded pgid or None)
Item = tuple[str, "str | None", "int | None"]


def _pgrp(proc: Path, pid: int) -> int | None:
    """
    The process group of C{pid}, or None if it is gone or a zombie.
    """
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[2])


def _maxq_identity(proc: Path, pid: int) -> tuple[str, str | None] | None:
    """
    C{(MAXQ_RUN_ID, MAXQ_STEP_ID or None)} from the environment C{pid} was
    started with, or None when it has no run id or cannot be read.
    """
    try:
        raw = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    run_id = step_id = None
    for item in raw.split(b"\0"):
        if item.startswith(b"MAXQ_RUN_ID="):
            run_id = item[12:].decode("utf-8", "replace")
        elif item.startswith(b"MAXQ_STEP_ID="):
            step_id = item[13:].decode("utf-8", "replace")
    if run_id is None:
        return None
    return run_id, step_id


def find_groups(items: list[Item], proc: Path | str = "/proc") -> dict[int, set]:
    """
    The process groups that hold a live process of one of C{items}:
    C{{pgid: {(run_id, step_id), ...}}}.  This process's own group is never
    returned.  Only the environments of the recorded groups' members are
    read, unless an item has no recorded group (the server died between
    starting it and recording it): then every process is looked at.
    """
    proc = Path(proc)
    wanted = {(run_id, step_id) for run_id, step_id, _ in items}
    recorded = {pgid for _, _, pgid in items if pgid}
    scan_all = any(not pgid for _, _, pgid in items)
    own = {os.getpid(), os.getpgrp()}
    found: dict[int, set] = {}
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in own:
            continue
        pgrp = _pgrp(proc, pid)
        if pgrp is None or pgrp <= 1 or pgrp in own:
            continue
        if not scan_all and pgrp not in recorded:
            continue
        identity = _maxq_identity(proc, pid)
        if identity in wanted:
            found.setdefault(pgrp, set()).add(identity)
    return found


class LeftoverProcesses:
    """
    Terminates the leftover groups of interrupted work: SIGTERM, then
    SIGKILL after C{grace_ms} for what is still there.
    """

    log = Logger()

    def __init__(self, clock, grace_ms: int = 5000, proc: str = "/proc",
                 poll_s: float = 0.05):
        self.clock = clock
        self.grace_s = grace_ms / 1000.0
        self.proc = proc
        self.poll_s = poll_s

    async def terminate(self, items: list[Item]) -> int:
        """
        Fires with the number of process groups that were terminated, once
        none of them has a live process left (or after a last SIGKILL).
        """
        groups = find_groups(items, self.proc)
        if not groups:
            return 0
        for pgid, owners in sorted(groups.items()):
            self.log.warn(
                "terminating process group {pgid} left running by a previous server "
                "(run/step {owners})", pgid=pgid,
                owners=", ".join(f"{r}/{s or 'flow'}" for r, s in sorted(
                    owners, key=lambda o: (o[0], o[1] or ""))),
            )
            _killpg(pgid, signal.SIGTERM)
        killed = set(groups)
        deadline = self.clock.seconds() + self.grace_s
        remaining = groups
        while remaining and self.clock.seconds() < deadline:
            await task.deferLater(self.clock, self.poll_s, lambda: None)
            remaining = find_groups(items, self.proc)
            for pgid in set(remaining) - killed:
                # A process forked into a new group meanwhile.
                _killpg(pgid, signal.SIGTERM)
                killed.add(pgid)
        if remaining:
            for pgid in remaining:
                _killpg(pgid, signal.SIGKILL)
            deadline = self.clock.seconds() + 2.0
            while find_groups(items, self.proc) and self.clock.seconds() < deadline:
                await task.deferLater(self.clock, self.poll_s, lambda: None)
        return len(killed)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
