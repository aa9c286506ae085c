#!/usr/bin/env python3
"""
Crash/restart cycle (issue 4): one run of 50 steps, the server killed with
SIGKILL and restarted on the same SQLite database 20 times while it runs.

    .venv/bin/python benchmarks/crash_cycle.py [--kills 20] [--seed N]
                                               [--keep DIR]

Not part of the test suite (it takes about a minute).  Each step appends a
marker line per execution; after each kill the database tells which steps
were running (those may run again).  After each restart, and at the end, no
process of the run may be left that is not a child of the live server.  At
the end the run must be completed, every step must have run exactly once,
except those running at a kill (once more per kill that caught them at
most), and no process of the run may be left.  Prints the counts and exits
non-zero when a check fails.

Timing: one step at a time (MAXQ_MAX_CONCURRENT_STEPS=1), steps sleep
0.4-0.9 s, the server lives 1.0-2.0 s between kills, so the run spans the
kills and a requeued step always has time to finish before the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

STEPS_PER_STAGE = 25

FLOW_SH = r"""#!/usr/bin/env bash
set -eu
# A failed stage (a step interrupted too often) fails the run: no recovery.
if [ -n "${MAXQ_FAILED_STAGE:-}" ]; then exit 0; fi
if [ -n "${MAXQ_COMPLETED_STAGE:-}" ]; then key="done-$MAXQ_COMPLETED_STAGE"; else key=start; fi
plan="$PLANS/$key.json"
if [ -e "$plan" ]; then
  curl -sS --fail-with-body -H 'Content-Type: application/json' \
       -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d @"$plan" >> "$OUT/curl.log"
  echo >> "$OUT/curl.log"
fi
"""

STEP_SH = r"""#!/usr/bin/env bash
echo "$MAXQ_STEP_ID $MAXQ_ATTEMPT $$" >> "$OUT/markers"
sleep "$SLEEP"
echo "$MAXQ_STEP_ID $MAXQ_ATTEMPT $$" >> "$OUT/ends"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_flow(root: Path, out: Path, rng: random.Random) -> None:
    flow = root / "cycle"
    (flow / "steps" / "work").mkdir(parents=True)
    plans = out / "plans"
    plans.mkdir(parents=True)
    for path, text in ((flow / "flow.sh", FLOW_SH), (flow / "steps" / "work" / "step.sh",
                                                      STEP_SH)):
        path.write_text(text)
        path.chmod(0o755)

    def sleep() -> str:
        return f"{rng.uniform(0.4, 0.9):.2f}"

    a = [{"id": f"a{i:02d}", "name": "work", "maxRetries": 0,
          "env": {"SLEEP": sleep()},
          "dependsOn": [f"a{i - 5:02d}"] if i >= 5 else []}
         for i in range(STEPS_PER_STAGE)]
    b = [{"id": f"b{i:02d}", "name": "work", "maxRetries": 0,
          "env": {"SLEEP": sleep()}, "dependsOn": [f"a{i:02d}"]}
         for i in range(STEPS_PER_STAGE)]
    (plans / "start.json").write_text(json.dumps({"stage": "one", "final": False,
                                                  "steps": a}))
    (plans / "done-one.json").write_text(json.dumps({"stage": "two", "final": True,
                                                     "steps": b}))


class Server:
    def __init__(self, root: Path, db: Path, out: Path, log: Path):
        self.root, self.db, self.out, self.log = root, db, out, log
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAXQ_")}
        env.update(MAXQ_FLOWS_ROOT=str(self.root), MAXQ_SQLITE_PATH=str(self.db),
                   MAXQ_MAX_CONCURRENT_STEPS="1", MAXQ_ABORT_GRACE_MS="1000",
                   OUT=str(self.out), PLANS=str(self.out / "plans"))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "maxq", "serve", "--port", str(port)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"server not healthy; see {self.log}")
            time.sleep(0.02)

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + "/api/v1" + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_processes(run_id: str) -> dict[int, int]:
    """
    C{{pid: ppid}} of live processes started with this run's MAXQ_RUN_ID.
    """
    needle = f"MAXQ_RUN_ID={run_id}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if rest[0] not in ("Z", "X") and needle in environ:
            found[int(entry)] = int(rest[1])
    return found


def leftovers(run_id: str, server_pid: int | None) -> list[int]:
    """
    Processes of the run that do not descend from the live server.
    """
    procs = run_processes(run_id)
    result = []
    for pid in procs:
        p, seen = pid, set()
        while p in procs and p not in seen:
            seen.add(p)
            p = procs[p]
        if p != server_pid:
            result.append(pid)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this directory and keep it (a temporary one "
                             "is removed after a successful run)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    base = args.keep or Path(tempfile.mkdtemp(prefix="maxq-crash-cycle-"))
    base.mkdir(parents=True, exist_ok=True)
    root, out = base / "flows", base / "out"
    write_flow(root, out, rng)
    server = Server(root, base / "maxq.db", out, base / "server.log")
    print(f"seed {seed}; working in {base}")

    running_at_kill: Counter = Counter()
    failures: list[str] = []
    started = time.monotonic()
    server.start()
    run_id = server.call("POST", "/flows/cycle/runs", {})["id"]
    try:
        for n in range(1, args.kills + 1):
            time.sleep(rng.uniform(1.0, 2.0))
            server.kill()
            conn = sqlite3.connect(base / "maxq.db")
            caught = [r[0] for r in conn.execute(
                "SELECT id FROM steps WHERE status = 'running' ORDER BY id")]
            calls = conn.execute(
                "SELECT count(*) FROM flow_calls WHERE status = 'running'").fetchone()[0]
            done = conn.execute(
                "SELECT count(*) FROM steps WHERE status = 'completed'").fetchone()[0]
            status = conn.execute("SELECT status FROM runs").fetchone()[0]
            conn.close()
            running_at_kill.update(caught)
            server.start()
            left = leftovers(run_id, server.proc.pid)
            if left:
                failures.append(f"kill {n}: leftover processes {left} after restart")
            print(f"kill {n:2d}: run {status:9s} {done:2d}/50 completed, running: "
                  f"{' '.join(caught) or '-'}{', flow call' if calls else ''}; "
                  f"leftovers after restart: {len(left)}")
        deadline = time.monotonic() + 120
        while True:
            run = server.call("GET", f"/runs/{run_id}")
            if run["status"] in ("completed", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        steps = server.call("GET", f"/runs/{run_id}/steps?limit=100")["steps"]
    finally:
        server.stop()
    time.sleep(0.2)

    markers = Counter(line.split()[0] for line in (out / "markers").read_text().splitlines())
    ends = Counter(line.split()[0] for line in (out / "ends").read_text().splitlines())
    ids = sorted(s["id"] for s in steps)
    once = [i for i in ids if markers[i] == 1]
    again = {i: markers[i] for i in ids if markers[i] > 1}
    print()
    print(f"run {run['status']} after {args.kills} kills in "
          f"{time.monotonic() - started:.1f} s; {len(steps)} steps, "
          f"{sum(s['status'] == 'completed' for s in steps)} completed")
    print(f"executions per step: {dict(sorted(Counter(markers[i] for i in ids).items()))} "
          "(executions: number of steps)")
    print(f"ran exactly once: {len(once)}; ran more than once: {len(again)} {again}")
    print(f"steps running at a kill: {len(running_at_kill)} "
          f"{dict(sorted(running_at_kill.items()))}")
    print(f"total executions {sum(markers.values())}, finished executions "
          f"{sum(ends.values())}")
    remaining = run_processes(run_id)
    print(f"processes of the run left at the end: {len(remaining)}")

    if run["status"] != "completed":
        failures.append(f"run is {run['status']}: {run.get('error')}")
    if len(steps) != 2 * STEPS_PER_STAGE or any(s["status"] != "completed" for s in steps):
        failures.append("not every step completed")
    for i in ids:
        allowed = 1 + running_at_kill[i]
        if not 1 <= markers[i] <= allowed:
            failures.append(f"step {i} ran {markers[i]} times (allowed {allowed})")
    if remaining:
        failures.append(f"leftover processes at the end: {sorted(remaining)}")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nOK: completed; every step ran once except those running at a kill; "
          "no leftover process")
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
