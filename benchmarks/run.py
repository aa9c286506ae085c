#!/usr/bin/env python3
"""
The MaxQ benchmark (issue 6): a real server, real flows, HTTP only, and the
cost of spawning bare processes measured in the same run as the floor.

    .venv/bin/python benchmarks/run.py [--backend sqlite|postgres|all]
                                       [--json out.json] [--quick]
                                       [--only LIST] [--profile DIR]

For each backend it starts ``python -m maxq.cli serve`` as a subprocess on a
fresh database (``MAXQ_MAX_CONCURRENT_STEPS=8``, default scheduler settings),
writes its flows into a temporary ``MAXQ_FLOWS_ROOT``, drives it through
``http.client`` on 127.0.0.1 only, and prints a table and then the JSON of
every figure.  Measures (counts of the full run; ``--quick`` shrinks them to
a smoke test of a few seconds):

- throughput: 20 runs of one final stage of 10 ``exit 0`` steps, triggered
  back to back (one keep-alive connection, each POST waits for its answer);
  steps/s from the first trigger to the last run's ``completedAt``.
- fan-out: one run, one stage of 500 independent steps; wall time from the
  trigger to the run's ``completedAt``.
- chain: one stage of 30 steps, each depending on the previous; every step
  writes its start and end time (bash ``$EPOCHREALTIME``, no process spawn);
  hop = start of step i - end of step i-1.
- stage callbacks: 15 stages of one step; ``flow.sh`` schedules the next
  stage with a single ``curl`` (no jq) on each callback; turnaround = start
  of the next stage's step - end of the previous stage's step.  The flow's
  own start and end are recorded too, to split the turnaround.
- the floor, measured in turns with MaxQ's trials (floor, MaxQ, floor, MaxQ,
  ... 3 times; medians are reported) so that both see the same machine:
  bare ``bash step.sh`` spawns from Python (``subprocess.Popen``, stdio to
  /dev/null): the same number of spawns at most 8 at once (throughput,
  fan-out), one after the other (chain: the gap between one process's end and
  the next one's start), and step -> ``bash flow.sh`` doing one ``curl`` to
  the same server (``GET /health``) -> step (callbacks).
- scale: latency of the ``POST`` of one stage of 10,000 steps; ``GET /runs``
  p50/p95 with 100,000 runs in the database (and a few filtered and sorted
  variants, for information); the server's ``VmRSS`` with 1,000
  ``sleep 5`` steps running at once (``MAXQ_MAX_CONCURRENT_STEPS=1000``).
- PostgreSQL only, two servers on one database (each server's steps are
  told apart by a ``BENCH_SERVER`` variable in its environment): the chain
  with the servers sharing the work as they like (8 slots each; hop latency
  overall, and for the few hops that went from one server to the other), and
  a handoff chain that makes every hop cross servers: one slot per server,
  chain steps of 50 ms, and beside each chain step a 20 ms companion step
  that becomes runnable with the next chain step and comes first in claim
  order, so the server that finished a chain step takes the companion and
  the other server the next chain step (hop = NOTIFY, claim and spawn on the
  other server).

- schedule (``benchmarks/schedules.py``, issue 12): 100 flows with
  ``@every 1s`` for 30 s (two servers on PostgreSQL): fire -> flow.sh
  lateness, runs made against fire times; server CPU while 1,000 hourly
  schedules wait.

Beside each figure: the server's CPU time per step (from /proc) and the
machine's CPU use while it was taken (busy and hypervisor steal, from
/proc/stat), since other load on the machine moves every number.  For
throughput, the CPU time per step is also split by who spent it (the
server, the steps and flows it reaped, PostgreSQL's processes, the
benchmark's client) and set against the floor's CPU per spawn (the
benchmark's own and its children's): their quotient is the ratio MaxQ could
reach if it kept the cores exactly as busy as the floor does, which shows
how much of a throughput gap is CPU spent per step rather than waiting.
``--only throughput,chain`` takes only some measures.

Filling 100,000 runs: with SQLite the server is started once to migrate the
schema, stopped, the rows are inserted straight into the ``runs`` table of
the file with ``sqlite3`` (realistic rows: 5 flows, mostly completed, spread
over 30 days), and the server is started again.  With PostgreSQL the same
rows go in with psycopg2 while the server runs, followed by ``VACUUM
ANALYZE`` (what autovacuum does to such a table soon after).  Only columns
the server's schema has are filled.

PostgreSQL is used when ``--backend postgres|all`` and 127.0.0.1:5432 answers
(user postgres, trust); every server gets a database of its own, created for
it and dropped at the end.  If the server does not come up on PostgreSQL the
backend is reported as skipped, with the end of the server's log.

The targets of issue 6 are printed beside each figure.  The chain's p95 is
compared with the floor's p95.  Figures of the PostgreSQL backend that issue
6 sets no PostgreSQL target for are judged against the SQLite targets for
information only (marked ``info``).

Every wait is bounded in count and time; servers are always stopped (SIGTERM,
then SIGKILL) and the temporary directory removed.  ``--profile DIR`` records
the server with py-spy (if installed) during throughput, fan-out, chain,
callbacks and the big stage, writes ``DIR/<backend>-<measure>.txt`` (folded stacks) and adds a
summary of the top functions to the JSON.  The process exits 0 when the
benchmark ran (whatever the targets say), 1 when it could not.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import ui as ui_bench  # benchmarks/ui.py: the web UI's measures (issue 16)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from events import evaluate_events, measure_events  # noqa: E402 (beside this file)

FULL = {
    "throughput_runs": 20,
    "throughput_steps": 10,
    "fanout_steps": 500,
    "chain_steps": 30,
    "callback_stages": 15,
    "big_stage_steps": 10000,
    "big_stage_repeats": 3,
    "listing_runs": 100000,
    "listing_requests": 200,
    "listing_variant_requests": 50,
    "rss_steps": 1000,
    "rss_sleep_s": 5,
    "two_server_chains": 3,
    "concurrency": 8,
    "repeats": 3,
    "limits_runs": 20,
    "limits_steps": 10,
    "events_clients": 100,
    # The events measure's workload: longer than throughput's (its ratio of
    # two short walls swung by +-0.04 between runs of 200 steps).
    "events_runs": 60,
}

QUICK = {
    "throughput_runs": 3,
    "throughput_steps": 4,
    "fanout_steps": 30,
    "chain_steps": 6,
    "callback_stages": 3,
    "big_stage_steps": 300,
    "big_stage_repeats": 1,
    "listing_runs": 2000,
    "listing_requests": 20,
    "listing_variant_requests": 5,
    "rss_steps": 20,
    "rss_sleep_s": 1,
    "two_server_chains": 1,
    "concurrency": 8,
    "repeats": 1,
    "limits_runs": 3,
    "limits_steps": 4,
    "events_clients": 10,
    "events_runs": 3,
}

FULL.update(ui_bench.FULL)
QUICK.update(ui_bench.QUICK)
import scale as _scale  # noqa: E402 (benchmarks/scale.py: issue 17's counts)

FULL.update(_scale.FULL)
QUICK.update(_scale.QUICK)

PG_ADMIN_DSN = "dbname=postgres user=postgres host=127.0.0.1 port=5432 connect_timeout=3"
PG_URL = "postgresql://postgres@127.0.0.1:5432/{db}"

SERVER_START_TIMEOUT_S = 60
SERVER_STOP_TIMEOUT_S = 30
HTTP_TIMEOUT_S = 60
# Completion is read from the server's timestamps, so polling need not be fast.
POLL_S = 0.05


class BenchError(Exception):
    """
    A measure could not be taken (timeout, failed run, bad answer).
    """


class ServerFailed(BenchError):
    """
    The server did not come up.
    """


class Interrupted(BaseException):
    pass


def _on_sigterm(signum, frame):
    raise Interrupted(f"signal {signum}")


# ------------------------------------------------------------------ helpers


class Deadline:
    def __init__(self, seconds: float, what: str):
        self.seconds = seconds
        self.what = what
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise BenchError(f"{self.what}: gave up after {self.seconds:.0f} s")

    @property
    def left(self) -> float:
        return self.end - time.monotonic()


def pct(values, p: float) -> float | None:
    """
    Nearest-rank percentile.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"n": 0, "median_ms": None, "p95_ms": None, "min_ms": None, "max_ms": None}
    return {
        "n": len(values_ms),
        "median_ms": round(statistics.median(values_ms), 3),
        "p95_ms": round(pct(values_ms, 95), 3),
        "min_ms": round(min(values_ms), 3),
        "max_ms": round(max(values_ms), 3),
    }


def load_average() -> str:
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return "loadavg " + Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int, key: str) -> int | None:
    """
    A kB value of /proc/<pid>/status (VmRSS, VmHWM).
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_cpu_s(pid: int, children: bool = False) -> float | None:
    """
    User + system CPU seconds of a process so far; with C{children}, those of
    its children it has reaped instead (cutime + cstime).
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()
        first = 13 if children else 11
        ticks = int(fields[first]) + int(fields[first + 1])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def postgres_cpu_s() -> dict[int, float]:
    """
    CPU seconds so far of every live process called C{postgres} (the local
    cluster's backends and helpers), by pid.
    """
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        cpu = proc_cpu_s(int(entry))
        if cpu is not None:
            found[int(entry)] = cpu
    return found


def own_cpu_s() -> float:
    """
    CPU seconds of this process and of the children it has reaped.
    """
    me = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + reaped.ru_utime + reaped.ru_stime


def git_describe() -> dict:
    info = {}
    try:
        info["commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "maxq", "sql"],
            capture_output=True, text=True, timeout=10).stdout.strip()
        info["maxq_tree_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def maxq_module() -> str | None:
    """
    Where the server's C{maxq} package is imported from (PYTHONPATH may
    point at another tree than this checkout).
    """
    try:
        out = subprocess.run([sys.executable, "-c", "import maxq; print(maxq.__file__)"],
                             capture_output=True, text=True, timeout=30, cwd="/")
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# ------------------------------------------------------------------- client


class Client:
    """
    A keep-alive JSON client of one server (127.0.0.1 only).
    """

    def __init__(self, port: int, timeout: float = HTTP_TIMEOUT_S):
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body=None, raw: bytes | None = None):
        """
        Returns C{(status, decoded JSON or None, seconds)}; the time covers
        sending the request and reading the whole answer.
        """
        data = raw if raw is not None else (
            json.dumps(body, separators=(",", ":")).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = self._connect()
            try:
                t0 = time.perf_counter()
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                payload = resp.read()
                elapsed = time.perf_counter() - t0
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
                continue
            if resp.will_close:
                self.close()
            try:
                decoded = json.loads(payload) if payload else None
            except ValueError:
                decoded = None
            return resp.status, decoded, elapsed
        raise AssertionError("not reached")

    def call(self, method: str, path: str, body=None, raw: bytes | None = None,
             expect=(200, 201)):
        status, decoded, _ = self.request(method, path, body, raw)
        if status not in expect:
            raise BenchError(f"{method} {path} answered {status}: {decoded}")
        return decoded

    # The API, as the benchmark uses it.

    def trigger(self, flow: str) -> dict:
        return self.call("POST", f"/api/v1/flows/{flow}/runs", {})

    def run(self, run_id: str) -> dict:
        return self.call("GET", f"/api/v1/runs/{run_id}")

    def wait_run(self, run_id: str, timeout_s: float, what: str) -> dict:
        deadline = Deadline(timeout_s, what)
        while True:
            run = self.run(run_id)
            if run["status"] in ("completed", "failed"):
                if run["status"] != "completed":
                    raise BenchError(f"{what}: run {run_id} {run['status']}: "
                                     f"{run.get('error')} stderr={run.get('stderr', '')[-300:]!r}")
                return run
            deadline.check()
            time.sleep(POLL_S)

    def wait_status(self, run_id: str, statuses, timeout_s: float, what: str) -> dict:
        deadline = Deadline(timeout_s, what)
        while True:
            run = self.run(run_id)
            if run["status"] in statuses:
                return run
            if run["status"] in ("completed", "failed"):
                raise BenchError(f"{what}: run {run_id} ended {run['status']}: "
                                 f"{run.get('error')}")
            deadline.check()
            time.sleep(POLL_S)


# ------------------------------------------------------------------- server


class Server:
    """
    One C{python -m maxq.cli serve} subprocess.
    """

    def __init__(self, name: str, workdir: Path, flows_root: Path, env: dict[str, str]):
        self.name = name
        self.workdir = workdir
        self.flows_root = flows_root
        self.extra_env = env
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path = workdir / f"server-{name}.log"
        self.client: Client | None = None
        self.start_s: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> "Server":
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAXQ_")}
        env.update({
            "MAXQ_FLOWS_ROOT": str(self.flows_root),
            "MAXQ_MAX_CONCURRENT_STEPS": "8",
            "MAXQ_HOST": "127.0.0.1",
        })
        env.update(self.extra_env)
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "maxq.cli", "serve", "--port", str(self.port)],
                env=env, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = Deadline(SERVER_START_TIMEOUT_S, f"server {self.name} start")
        client = Client(self.port, timeout=5)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise ServerFailed(
                        f"server {self.name} exited with {self.proc.returncode} before "
                        f"it was healthy; end of its log:\n{self.log_tail()}")
                try:
                    status, _, _ = client.request("GET", "/health")
                    if status == 200:
                        break
                except (OSError, http.client.HTTPException):
                    pass
                if deadline.left < 0:
                    raise ServerFailed(
                        f"server {self.name} not healthy after {SERVER_START_TIMEOUT_S} s; "
                        f"end of its log:\n{self.log_tail()}")
                time.sleep(0.05)
        finally:
            client.close()
        self.start_s = time.perf_counter() - t0
        self.client = Client(self.port)
        return self

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait(10)
        except OSError:
            pass


# -------------------------------------------------------------------- flows

TS_STEP = """#!/bin/bash
# Start and end in nanoseconds (bash's $EPOCHREALTIME has microseconds).
s=$EPOCHREALTIME
e=$EPOCHREALTIME
printf '%s000 %s000 %s\\n' "${{s/[.,]/}}" "${{e/[.,]/}}" "${{BENCH_SERVER:-}}" \\
    > "{dir}/${{MAXQ_RUN_ID}}_${{MAXQ_STEP_ID}}"
"""

# The two-server handoff chain: the chain's steps last 50 ms, and each has a
# 20 ms companion that becomes runnable with the next chain step and comes
# first in claim order; with one slot per server, the server that ran a chain
# step takes its companion and the other server takes the next chain step.
TS_SLOW_STEP = TS_STEP.replace("e=$EPOCHREALTIME", "sleep 0.05\ne=$EPOCHREALTIME")
COMPANION_STEP = TS_STEP.replace("e=$EPOCHREALTIME", "sleep 0.02\ne=$EPOCHREALTIME")

NOOP_STEP = "#!/bin/bash\nexit 0\n"

SLEEP_STEP = "#!/bin/bash\nsleep {seconds}\n"

# One curl, and only on the first call: the stage is final, so the flow is
# not called again unless the stage failed (then the run fails).
STATIC_FLOW = """#!/bin/bash
[ -z "$MAXQ_COMPLETED_STAGE$MAXQ_FAILED_STAGE" ] || exit 0
exec curl -sSf -o /dev/null -H 'Content-Type: application/json' -H 'Expect:' \\
    --data-binary @stage.json "$MAXQ_API/runs/$MAXQ_RUN_ID/steps"
"""

# Stage s<n> holds one step t<n>; the last one is final.  One curl, body
# built by bash itself; start and end of the flow recorded.
CALLBACK_FLOW = """#!/bin/bash
t0=$EPOCHREALTIME
[ -z "$MAXQ_FAILED_STAGE" ] || exit 0
c=${{MAXQ_COMPLETED_STAGE#s}}
n=$(( ${{c:-0}} + 1 ))
f=false
(( n >= {stages} )) && f=true
# The start goes out first: the run may complete (and this flow be stopped)
# as soon as the last stage's step ends.
printf '%s000' "${{t0/[.,]/}}" > "{dir}/${{MAXQ_RUN_ID}}_flow$n"
curl -sSf -o /dev/null -H 'Content-Type: application/json' -H 'Expect:' \\
    --data-binary "{{\\"stage\\":\\"s$n\\",\\"final\\":$f,\\"steps\\":[{{\\"id\\":\\"t$n\\",\\"name\\":\\"ts\\",\\"maxRetries\\":0}}]}}" \\
    "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" || exit 1
t1=$EPOCHREALTIME
printf ' %s000\\n' "${{t1/[.,]/}}" >> "{dir}/${{MAXQ_RUN_ID}}_flow$n"
"""

# The floor of a callback: what the flow costs when nothing but a process
# start and one curl to the same server (GET /health) happens.
CALLBACK_FLOOR_FLOW = """#!/bin/bash
t0=$EPOCHREALTIME
curl -sSf -o /dev/null -H 'Expect:' "$BENCH_URL/health" || exit 1
t1=$EPOCHREALTIME
"""

# Keeps its run running (flow.sh still running) so that the benchmark can
# post a stage itself; aborted afterwards.
HOLD_FLOW = "#!/bin/bash\nexec sleep 60\n"


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(0o755)


def _stage_body(stage: str, steps: list[dict], final: bool = True) -> dict:
    return {"stage": stage, "final": final, "steps": steps}


def independent_steps(n: int, name: str) -> list[dict]:
    return [{"id": f"s{i:05d}", "name": name, "maxRetries": 0} for i in range(n)]


def chain_steps(n: int) -> list[dict]:
    steps = []
    for i in range(n):
        step = {"id": f"c{i:03d}", "name": "ts", "maxRetries": 0}
        if i:
            step["dependsOn"] = [f"c{i - 1:03d}"]
        steps.append(step)
    return steps


def handoff_steps(n: int) -> list[dict]:
    steps = []
    for i in range(n):
        step = {"id": f"c{i:03d}", "name": "ts", "maxRetries": 0}
        if i:
            step["dependsOn"] = [f"c{i - 1:03d}"]
        steps.append(step)
        steps.append({"id": f"d{i:03d}", "name": "companion", "maxRetries": 0,
                      "dependsOn": [f"c{i:03d}"]})
    return steps


def write_flows(root: Path, ts_dir: Path, counts: dict) -> None:
    def static_flow(name, steps, step_scripts):
        _write(root / name / "flow.sh", STATIC_FLOW, True)
        _write(root / name / "stage.json",
               json.dumps(_stage_body("main", steps), separators=(",", ":")))
        for step_name, text in step_scripts.items():
            _write(root / name / "steps" / step_name / "step.sh", text, True)

    ts = TS_STEP.format(dir=ts_dir)
    static_flow("bench_throughput",
                independent_steps(counts["throughput_steps"], "noop"), {"noop": NOOP_STEP})
    static_flow("bench_fanout",
                independent_steps(counts["fanout_steps"], "noop"), {"noop": NOOP_STEP})
    static_flow("bench_chain", chain_steps(counts["chain_steps"]), {"ts": ts})
    static_flow("bench_rss", independent_steps(counts["rss_steps"], "sleep"),
                {"sleep": SLEEP_STEP.format(seconds=counts["rss_sleep_s"])})
    _write(root / "bench_callbacks" / "flow.sh",
           CALLBACK_FLOW.format(stages=counts["callback_stages"], dir=ts_dir), True)
    _write(root / "bench_callbacks" / "steps" / "ts" / "step.sh", ts, True)
    static_flow("bench_handoff", handoff_steps(counts["chain_steps"]),
                {"ts": TS_SLOW_STEP.format(dir=ts_dir),
                 "companion": COMPANION_STEP.format(dir=ts_dir)})
    static_flow("bench_warmup", independent_steps(8, "noop"), {"noop": NOOP_STEP})
    _write(root / "bench_hold" / "flow.sh", HOLD_FLOW, True)
    _write(root / "bench_hold" / "steps" / "noop" / "step.sh", NOOP_STEP, True)
    _write(root / "floor" / "callback_flow.sh", CALLBACK_FLOOR_FLOW, True)
    ui_bench.write_flows(root)


def read_ts(ts_dir: Path, run_id: str, step_id: str) -> tuple[int, int | None, str]:
    """
    (start ns, end ns or None, server label) written by a step or a flow.
    """
    text = (ts_dir / f"{run_id}_{step_id}").read_text().split()
    return (int(text[0]), int(text[1]) if len(text) > 1 else None,
            text[2] if len(text) > 2 else "")


# -------------------------------------------------------------------- floor


class Spawner:
    """
    Bare spawns of C{bash step.sh} from Python with C{subprocess.Popen},
    reaped through pidfds (so that no other child of this process, such as a
    server, is ever reaped by accident).
    """

    def __init__(self):
        self.sel = selectors.DefaultSelector()

    def close(self):
        self.sel.close()

    def _popen(self, script: Path, env: dict | None) -> subprocess.Popen:
        return subprocess.Popen(
            ["bash", script.name], cwd=script.parent, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def parallel(self, script: Path, n: int, concurrency: int, timeout_s: float = 120,
                 env_for=None) -> float:
        """
        Spawn C{n} at most C{concurrency} at once; seconds from the first
        spawn to the last exit.
        """
        deadline = Deadline(timeout_s, "parallel spawns")
        running: dict[int, tuple[subprocess.Popen, int]] = {}
        started = 0
        t0 = time.perf_counter()
        try:
            while started < n or running:
                while started < n and len(running) < concurrency:
                    p = self._popen(script, env_for(started) if env_for else None)
                    fd = os.pidfd_open(p.pid)
                    self.sel.register(fd, selectors.EVENT_READ, p)
                    running[fd] = (p, fd)
                    started += 1
                for key, _ in self.sel.select(timeout=max(0.0, min(1.0, deadline.left))):
                    p = key.data
                    self.sel.unregister(key.fd)
                    os.close(key.fd)
                    running.pop(key.fd, None)
                    p.wait()
                    if p.returncode != 0:
                        raise BenchError(f"{script} exited {p.returncode}")
                deadline.check()
            return time.perf_counter() - t0
        finally:
            for fd, (p, _) in list(running.items()):
                self.sel.unregister(fd)
                os.close(fd)
                p.kill()
                p.wait()

    def sequential(self, scripts_envs, timeout_s: float = 120) -> float:
        """
        Spawn each C{(script, env)} after the previous one exited.
        """
        deadline = Deadline(timeout_s, "sequential spawns")
        t0 = time.perf_counter()
        for script, env in scripts_envs:
            p = self._popen(script, env)
            try:
                p.wait(max(0.1, deadline.left))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise BenchError(f"{script} did not finish in time")
            if p.returncode != 0:
                raise BenchError(f"{script} exited {p.returncode}")
        return time.perf_counter() - t0


def floor_parallel(ctx, spawner: "Spawner", n: int) -> float:
    """
    Seconds for C{n} bare spawns of the no-op step, at most C{concurrency} at once.
    """
    noop = ctx.flows_root / "bench_throughput" / "steps" / "noop" / "step.sh"
    return spawner.parallel(noop, n, ctx.counts["concurrency"])


def floor_chain(ctx, spawner: "Spawner", label: str) -> list[float]:
    """
    Hops (ms) of the chain's step spawned back to back from Python: the gap
    between one process's end and the next one's start.
    """
    ts = ctx.flows_root / "bench_chain" / "steps" / "ts" / "step.sh"
    n = ctx.counts["chain_steps"]
    envs = [dict(os.environ, MAXQ_RUN_ID=label, MAXQ_STEP_ID=f"c{i:03d}") for i in range(n)]
    spawner.sequential([(ts, e) for e in envs])
    marks = [read_ts(ctx.ts_dir, label, f"c{i:03d}") for i in range(n)]
    return [(marks[i][0] - marks[i - 1][1]) / 1e6 for i in range(1, n)]


def floor_callbacks(ctx, spawner: "Spawner", server: Server, label: str) -> list[float]:
    """
    Turnarounds (ms) of step -> bash flow.sh doing one curl to the same
    server (GET /health) -> step, spawned back to back from Python.
    """
    ts = ctx.flows_root / "bench_callbacks" / "steps" / "ts" / "step.sh"
    flow = ctx.flows_root / "floor" / "callback_flow.sh"
    n = ctx.counts["callback_stages"]
    flow_env = dict(os.environ, BENCH_URL=f"http://127.0.0.1:{server.port}")
    seq = []
    for i in range(1, n + 1):
        if i > 1:
            seq.append((flow, flow_env))
        seq.append((ts, dict(os.environ, MAXQ_RUN_ID=label, MAXQ_STEP_ID=f"t{i}")))
    spawner.sequential(seq)
    marks = [read_ts(ctx.ts_dir, label, f"t{i}") for i in range(1, n + 1)]
    return [(marks[i][0] - marks[i - 1][1]) / 1e6 for i in range(1, n)]


FLOOR_METHOD = ("subprocess.Popen(['bash', 'step.sh']) from the benchmark, stdio to "
                "/dev/null, reaped through pidfds; measured in turns with MaxQ's trials")


# ------------------------------------------------------------------ profile


class Profiler:
    """
    py-spy record of the server during one measure, if asked for.
    """

    def __init__(self, ctx, server: Server, label: str):
        self.ctx = ctx
        self.server = server
        self.label = label
        self.proc = None
        self.path = None

    def __enter__(self):
        if not self.ctx.profile_dir or not self.ctx.py_spy:
            return self
        self.path = self.ctx.profile_dir / f"{self.label}.txt"
        self.proc = subprocess.Popen(
            [self.ctx.py_spy, "record", "--pid", str(self.server.pid), "--rate", "500",
             "--format", "raw", "--nonblocking", "-o", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attach
        return self

    def __exit__(self, *exc):
        if self.proc is None:
            return False
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.path.exists():
            self.ctx.profiles[self.label] = summarize_profile(self.path)
        return False


def _short_frame(frame: str) -> str:
    m = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    for marker in ("site-packages/", "/lib/python3.", "/work/", "/tmp/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    if path.startswith("11/"):
        path = path[3:]
    return f"{func} ({path})"


def summarize_profile(path: Path, top: int = 20) -> dict:
    """
    Self and inclusive shares of the busy samples of a folded-stack file.
    """
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
        for f in set(frames):
            incl_counts[f] = incl_counts.get(f, 0) + n

    def ranked(counts):
        return [{"function": f, "share": round(c / total, 4), "samples": c}
                for f, c in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    return {"file": str(path), "samples": total, "self": ranked(self_counts),
            "inclusive": ranked(incl_counts)}


# ----------------------------------------------------------------- measures


class SysCpu:
    """
    Machine-wide CPU use between two points (from /proc/stat): how busy the
    two cores were, and how much time the hypervisor stole.
    """

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            return [int(x) for x in parts]
        except (OSError, ValueError, IndexError):
            return None

    def delta(self) -> dict:
        end = self._read()
        if not self.start or not end:
            return {}
        d = [b - a for a, b in zip(self.start, end)]
        total = sum(d[:8]) or 1
        idle = d[3] + d[4]
        return {"busy_pct": round(100 * (total - idle - d[7]) / total, 1),
                "steal_pct": round(100 * d[7] / total, 1)}


class Trials:
    """
    The repeated trials of one measure: per-trial figures, medians, the
    server's CPU and the machine's CPU use over all trials.
    """

    def __init__(self, server: Server):
        self.server = server
        self.cpu0 = proc_cpu_s(server.pid)
        self.sys = SysCpu()

    def server_cpu_ms(self) -> float | None:
        after = proc_cpu_s(self.server.pid)
        if self.cpu0 is None or after is None:
            return None
        return round((after - self.cpu0) * 1000, 1)


class CpuCost:
    """
    Where CPU time went during the intervals this is entered for: the server
    itself, the processes it started and reaped (steps, flows and what they
    ran, such as curl), the local PostgreSQL processes (PostgreSQL backend
    only; a process that exits meanwhile is missed), and this benchmark (its
    HTTP client).
    """

    PARTS = ("server", "steps_and_flows", "postgres", "client")

    def __init__(self, server: Server, backend: str):
        self.server = server
        self.backend = backend
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self._start = None

    def _sample(self):
        return (proc_cpu_s(self.server.pid), proc_cpu_s(self.server.pid, children=True),
                postgres_cpu_s() if self.backend == "postgres" else {}, own_cpu_s())

    def __enter__(self):
        self._start = self._sample()
        return self

    def __exit__(self, *exc):
        (server0, reaped0, pg0, me0), (server1, reaped1, pg1, me1) = self._start, self._sample()
        if None not in (server0, server1, reaped0, reaped1):
            self.seconds["server"] += server1 - server0
            self.seconds["steps_and_flows"] += reaped1 - reaped0
        self.seconds["postgres"] += sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg1.items())
        self.seconds["client"] += me1 - me0
        return False

    def ms_per(self, n: int) -> dict:
        per = {part: round(self.seconds[part] * 1000 / n, 3) for part in self.PARTS}
        per["total"] = round(sum(self.seconds.values()) * 1000 / n, 3)
        return per


def _median(values):
    return round(statistics.median(values), 2) if values else None


def warm_up(ctx, server: Server) -> None:
    """
    A few small runs first, so that imports and caches the first requests
    pay for are not counted.
    """
    c = server.client
    for flow in ("bench_warmup", "bench_warmup"):
        c.wait_run(c.trigger(flow)["id"], 60, "warm-up")
    return {"runs": 2}


def throughput_trial(server: Server, runs_n: int) -> tuple[float, float]:
    c = server.client
    t0 = time.time()
    ids = [c.trigger("bench_throughput")["id"] for _ in range(runs_n)]
    trigger_s = time.time() - t0
    runs = [c.wait_run(i, 120, "throughput") for i in ids]
    return max(r["completedAt"] for r in runs) / 1000.0 - t0, trigger_s


def measure_throughput(ctx, server: Server, spawner: "Spawner") -> dict:
    runs_n, steps_n = ctx.counts["throughput_runs"], ctx.counts["throughput_steps"]
    total = runs_n * steps_n
    rates, floor_rates, triggers = [], [], []
    trials = Trials(server)
    cost = CpuCost(server, ctx.backend)
    floor_cpu_s = 0.0
    with Profiler(ctx, server, f"{ctx.backend}-throughput"):
        for _ in range(ctx.counts["repeats"]):
            before = own_cpu_s()
            floor_rates.append(total / floor_parallel(ctx, spawner, total))
            floor_cpu_s += own_cpu_s() - before
            with cost:
                wall, trigger_s = throughput_trial(server, runs_n)
            rates.append(total / wall)
            triggers.append(trigger_s * 1000)
    cpu = trials.server_cpu_ms()
    trials_n = ctx.counts["repeats"]
    cpu_per_step = cost.ms_per(total * trials_n)
    floor_cpu_ms = round(floor_cpu_s * 1000 / (total * trials_n), 3)
    return {
        "cpu_ms_per_step": cpu_per_step,
        "floor_cpu_ms_per_spawn": floor_cpu_ms,
        "cpu_ceiling_ratio": round(floor_cpu_ms / cpu_per_step["total"], 3)
        if cpu_per_step["total"] else None,
        "runs": runs_n, "steps_per_run": steps_n, "steps": total,
        "steps_per_s": _median(rates),
        "steps_per_s_all": [round(r, 1) for r in rates],
        "floor_spawns_per_s": _median(floor_rates),
        "floor_spawns_per_s_all": [round(r, 1) for r in floor_rates],
        "trigger_ms_all": [round(t, 1) for t in triggers],
        "server_cpu_ms_per_step": round(cpu / (total * trials_n), 3) if cpu else None,
        "machine": trials.sys.delta(),
    }


def measure_fanout(ctx, server: Server, spawner: "Spawner") -> dict:
    c = server.client
    n = ctx.counts["fanout_steps"]
    walls, stage_walls, floors = [], [], []
    trials = Trials(server)
    with Profiler(ctx, server, f"{ctx.backend}-fanout"):
        for _ in range(ctx.counts["repeats"]):
            floors.append(floor_parallel(ctx, spawner, n) * 1000)
            t0 = time.time()
            run = c.wait_run(c.trigger("bench_fanout")["id"], 120, "fan-out")
            walls.append(run["completedAt"] - t0 * 1000)
            stage_walls.append(run["completedAt"] - run["stages"][0]["createdAt"])
    cpu = trials.server_cpu_ms()
    return {
        "steps": n,
        "wall_ms": _median(walls),
        "wall_ms_all": [round(w, 1) for w in walls],
        "stage_wall_ms_all": stage_walls,
        "floor_wall_ms": _median(floors),
        "floor_wall_ms_all": [round(w, 1) for w in floors],
        "server_cpu_ms_per_step": round(cpu / (n * ctx.counts["repeats"]), 3)
        if cpu else None,
        "machine": trials.sys.delta(),
    }


def chain_hops(ctx, run_id: str, n: int) -> tuple[list[float], list[float]]:
    marks = [read_ts(ctx.ts_dir, run_id, f"c{i:03d}") for i in range(n)]
    hops, cross = [], []
    for i in range(1, n):
        hop = (marks[i][0] - marks[i - 1][1]) / 1e6
        hops.append(hop)
        if marks[i][2] != marks[i - 1][2]:
            cross.append(hop)
    return hops, cross


def measure_chain(ctx, server: Server, spawner: "Spawner") -> dict:
    c = server.client
    n = ctx.counts["chain_steps"]
    hops, floor = [], []
    trials = Trials(server)
    with Profiler(ctx, server, f"{ctx.backend}-chain"):
        for rep in range(ctx.counts["repeats"]):
            floor.extend(floor_chain(ctx, spawner, f"{ctx.backend}-chainfloor{rep}"))
            run_id = c.trigger("bench_chain")["id"]
            c.wait_run(run_id, 120, "chain")
            hops.extend(chain_hops(ctx, run_id, n)[0])
    return {"steps": n, "runs": ctx.counts["repeats"], "hop": summary_ms(hops),
            "floor_hop": summary_ms(floor), "server_cpu_ms": trials.server_cpu_ms(),
            "machine": trials.sys.delta()}


def measure_callbacks(ctx, server: Server, spawner: "Spawner") -> dict:
    c = server.client
    n = ctx.counts["callback_stages"]
    turns, to_flow, in_flow, flow_to_step, floor = [], [], [], [], []
    trials = Trials(server)
    with Profiler(ctx, server, f"{ctx.backend}-callbacks"):
        for rep in range(ctx.counts["repeats"]):
            floor.extend(floor_callbacks(ctx, spawner, server,
                                         f"{ctx.backend}-cbfloor{rep}"))
            run_id = c.trigger("bench_callbacks")["id"]
            c.wait_run(run_id, 120, "callbacks")
            steps = [read_ts(ctx.ts_dir, run_id, f"t{i}") for i in range(1, n + 1)]
            flows = {i: read_ts(ctx.ts_dir, run_id, f"flow{i}") for i in range(2, n + 1)}
            for i in range(1, n):
                prev_end, nxt_start = steps[i - 1][1], steps[i][0]
                f_start, f_end = flows[i + 1][0], flows[i + 1][1]
                turns.append((nxt_start - prev_end) / 1e6)
                to_flow.append((f_start - prev_end) / 1e6)
                flow_to_step.append((nxt_start - f_start) / 1e6)
                if f_end is not None:  # the last flow is stopped when the run completes
                    in_flow.append((f_end - f_start) / 1e6)
    return {
        "stages": n, "runs": ctx.counts["repeats"],
        "turnaround": summary_ms(turns),
        "step_end_to_flow_start": summary_ms(to_flow),
        "flow_start_to_next_step_start": summary_ms(flow_to_step),
        "flow_duration": summary_ms(in_flow),
        "floor_turnaround": summary_ms(floor),
        "floor_method": "step, then bash flow.sh with one curl GET /health, then step",
        "server_cpu_ms": trials.server_cpu_ms(),
        "machine": trials.sys.delta(),
    }


def measure_big_stage(ctx, server: Server) -> dict:
    c = server.client
    n = ctx.counts["big_stage_steps"]
    body = json.dumps(_stage_body("big", independent_steps(n, "noop"), final=False),
                      separators=(",", ":")).encode()
    latencies = []
    with Profiler(ctx, server, f"{ctx.backend}-big_stage"):
        for rep in range(ctx.counts["big_stage_repeats"]):
            latencies.append(_accept_big_stage(c, n, body))
    return {
        "steps": n, "body_bytes": len(body),
        "accept_ms": [round(x, 1) for x in latencies],
        "accept_ms_median": round(statistics.median(latencies), 1),
        "accept_ms_max": round(max(latencies), 1),
    }


def _accept_big_stage(c, n: int, body: bytes) -> float:
    """
    Milliseconds to accept one stage of C{n} steps posted to a new run.
    """
    run_id = c.trigger("bench_hold")["id"]
    try:
        c.wait_status(run_id, ("running",), 30, "stage acceptance: run start")
        status, answer, elapsed = c.request("POST", f"/api/v1/runs/{run_id}/steps",
                                            raw=body)
        if status != 201 or answer.get("scheduled") != n:
            raise BenchError(f"posting {n} steps answered {status}: {str(answer)[:300]}")
        return elapsed * 1000
    finally:
        c.call("POST", f"/api/v1/runs/{run_id}/abort", {})


RUN_FLOWS = ("etl", "nightly-report", "ingest", "backup", "ml-train")


def runs_rows(n: int, seed: int = 6) -> list[dict]:
    rnd = random.Random(seed)
    now = int(time.time() * 1000)
    span = 30 * 24 * 3600 * 1000
    rows = []
    for i in range(n):
        created = now - span + (span * i) // n + rnd.randrange(1000)
        status = rnd.choices(("completed", "failed", "running"), (90, 9, 1))[0]
        started = created + rnd.randrange(5, 200)
        completed = None if status == "running" else started + rnd.randrange(500, 600000)
        rows.append({
            "id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            "flow_name": RUN_FLOWS[i % len(RUN_FLOWS)],
            "status": status,
            "name": None,
            "description": None,
            "input": json.dumps({"batch": i, "source": "s3://bucket/day"}),
            "output": json.dumps({"rows": rnd.randrange(10**6)}) if status == "completed"
            else None,
            "error": json.dumps({"reason": "stage_failed", "stage": "load"})
            if status == "failed" else None,
            "metadata": json.dumps({"team": "data"}),
            "stdout": "scheduled stage load\n",
            "stderr": "",
            "termination_reason": None,
            "created_at": created,
            "started_at": started,
            "completed_at": completed,
        })
    return rows


def fill_runs_sqlite(db_path: Path, n: int) -> dict:
    conn = sqlite3.connect(str(db_path), isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
        rows = runs_rows(n)
        cols = [k for k in rows[0] if k in have]
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO runs ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
            [[r[k] for k in cols] for r in rows])
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"inserted": n, "insert_ms": round((time.perf_counter() - t0) * 1000, 1),
                "method": "sqlite3 straight into runs, server stopped"}
    finally:
        conn.close()


def fill_runs_postgres(db: str, n: int) -> dict:
    import psycopg2
    import psycopg2.extras

    conn = psycopg2.connect(f"dbname={db} user=postgres host=127.0.0.1 port=5432")
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = 'runs' AND table_schema = current_schema()")
            have = {r[0] for r in cur.fetchall()}
            if not have:
                raise BenchError("no runs table in the PostgreSQL schema")
            rows = runs_rows(n)
            cols = [k for k in rows[0] if k in have]
            t0 = time.perf_counter()
            psycopg2.extras.execute_values(
                cur, f"INSERT INTO runs ({','.join(cols)}) VALUES %s",
                [[r[k] for k in cols] for r in rows], page_size=2000)
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            # What autovacuum would have done to a table of that age.
            cur.execute("VACUUM ANALYZE runs")
        return {"inserted": n, "insert_ms": round((time.perf_counter() - t0) * 1000, 1),
                "method": "psycopg2 execute_values into runs, server running, "
                          "then VACUUM ANALYZE"}
    finally:
        conn.close()


LISTING_VARIANTS = {
    "default": "/api/v1/runs",
    "flowName": "/api/v1/runs?flowName=ingest",
    "status=failed": "/api/v1/runs?status=failed",
    "sortBy=completedAt": "/api/v1/runs?sortBy=completedAt",
    "sortOrder=asc&limit=100": "/api/v1/runs?sortOrder=asc&limit=100",
    "offset=5000": "/api/v1/runs?offset=5000",
}


def measure_listing(ctx, server: Server, fill: dict) -> dict:
    c = server.client
    answer = c.call("GET", "/api/v1/runs?limit=1")
    total = answer["pagination"]["total"]
    if total < ctx.counts["listing_runs"]:
        raise BenchError(f"expected {ctx.counts['listing_runs']} runs, the server has {total}")
    out = {"runs_in_db": total, "fill": fill, "variants": {}}
    for name, path in LISTING_VARIANTS.items():
        count = (ctx.counts["listing_requests"] if name == "default"
                 else ctx.counts["listing_variant_requests"])
        for _ in range(5):
            c.call("GET", path)
        times = []
        deadline = Deadline(120, f"GET {path}")
        for _ in range(count):
            status, _, elapsed = c.request("GET", path)
            if status != 200:
                raise BenchError(f"GET {path} answered {status}")
            times.append(elapsed * 1000)
            deadline.check()
        out["variants"][name] = {"path": path, **summary_ms(times)}
    d = out["variants"]["default"]
    out["p50_ms"], out["p95_ms"] = d["median_ms"], d["p95_ms"]
    out["worst_variant_p95_ms"] = max(v["p95_ms"] for v in out["variants"].values())
    return out


def measure_rss(ctx, server: Server) -> dict:
    c = server.client
    n = ctx.counts["rss_steps"]
    idle_kb = proc_status(server.pid, "VmRSS")
    t0 = time.perf_counter()
    run_id = c.trigger("bench_rss")["id"]
    deadline = Deadline(60 + n / 20, "RSS: waiting for the steps to run")
    max_running, rss_at_max, peak_rss, reached_s = 0, None, 0, None
    while True:
        rss = proc_status(server.pid, "VmRSS") or 0
        peak_rss = max(peak_rss, rss)
        answer = c.call("GET", f"/api/v1/runs/{run_id}/steps?status=running&limit=1")
        running = answer["pagination"]["total"]
        if running > max_running:
            max_running, rss_at_max = running, proc_status(server.pid, "VmRSS")
        if running >= n and reached_s is None:
            reached_s = time.perf_counter() - t0
        if reached_s is not None and time.perf_counter() - t0 > reached_s + 1.0:
            break
        run = c.run(run_id)
        if run["status"] in ("completed", "failed"):
            break
        deadline.check()
        time.sleep(0.1)
    c.wait_run(run_id, ctx.counts["rss_sleep_s"] * 3 + 120, "RSS run")
    hwm = proc_status(server.pid, "VmHWM")
    return {
        "steps": n,
        "max_running_seen": max_running,
        "all_running_after_ms": round(reached_s * 1000, 1) if reached_s else None,
        "idle_rss_mb": round(idle_kb / 1024, 1) if idle_kb else None,
        "rss_mb_at_max_running": round(rss_at_max / 1024, 1) if rss_at_max else None,
        "peak_rss_mb": round(peak_rss / 1024, 1),
        "vm_hwm_mb": round(hwm / 1024, 1) if hwm else None,
    }


def _two_server_chains(ctx, a: Server, b: Server, flow: str) -> dict:
    n = ctx.counts["chain_steps"]
    hops, cross, per_server = [], [], {}
    for rep in range(ctx.counts["two_server_chains"]):
        client = (a if rep % 2 == 0 else b).client
        run_id = client.trigger(flow)["id"]
        client.wait_run(run_id, 120, f"two-server {flow}")
        h, x = chain_hops(ctx, run_id, n)
        hops.extend(h)
        cross.extend(x)
        for i in range(n):
            for prefix in ("c", "d"):
                try:
                    srv = read_ts(ctx.ts_dir, run_id, f"{prefix}{i:03d}")[2]
                except OSError:
                    continue  # the plain chain has no companions
                key = f"{prefix}@{srv}"
                per_server[key] = per_server.get(key, 0) + 1
    return {"chains": ctx.counts["two_server_chains"], "steps_per_chain": n,
            "hop": summary_ms(hops), "cross_server_hop": summary_ms(cross),
            "steps_per_server": per_server}


def measure_two_servers(ctx, a: Server, b: Server) -> dict:
    """
    The chain with two servers (8 slots each) sharing the work as they like.
    """
    return _two_server_chains(ctx, a, b, "bench_chain")


def measure_handoff(ctx, a: Server, b: Server) -> dict:
    """
    The chain handed from one server to the other at every step (one slot
    per server, see TS_SLOW_STEP): the hop is a cross-server handoff.
    """
    return _two_server_chains(ctx, a, b, "bench_handoff")


# ------------------------------------------------------------------ backends


class Context:
    def __init__(self, args, counts, workdir):
        self.args = args
        self.counts = counts
        self.workdir = workdir
        self.flows_root = workdir / "flows"
        self.ts_dir = workdir / "ts"
        self.ts_dir.mkdir()
        self.backend = ""
        self.servers: list[Server] = []
        self.pg_dbs: list[str] = []
        self.profile_dir = Path(args.profile).resolve() if args.profile else None
        self.py_spy = None
        if self.profile_dir:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            self.py_spy = shutil.which("py-spy") or shutil.which(
                "py-spy", path=str(Path(sys.executable).parent))
        self.profiles: dict = {}
        self.wanted = set(args.only.split(",")) if args.only else set(MEASURES)
        unknown = self.wanted - set(MEASURES)
        if unknown:
            raise SystemExit(f"unknown measures: {', '.join(sorted(unknown))}")

    def new_server(self, name: str, env: dict) -> Server:
        server = Server(name, self.workdir, self.flows_root, env)
        self.servers.append(server)
        return server.start()

    def database_env(self, name: str) -> dict:
        if self.backend == "sqlite":
            return {"MAXQ_SQLITE_PATH": str(self.workdir / f"{name}.db")}
        db = f"maxq_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        pg_admin(f'CREATE DATABASE "{db}"')
        self.pg_dbs.append(db)
        return {"MAXQ_DATABASE_URL": PG_URL.format(db=db)}


def pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_DSN)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def postgres_reachable() -> str | None:
    """
    None when PostgreSQL answers at 127.0.0.1:5432, else why not.
    """
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            pass
    except OSError as e:
        return f"nothing listens on 127.0.0.1:5432 ({e})"
    try:
        pg_admin("SELECT 1")
    except Exception as e:  # noqa: BLE001 - any driver failure means "skip"
        return f"cannot connect as postgres: {str(e).strip()}"
    return None


def attempt(results: dict, key: str, fn, *args):
    try:
        results[key] = fn(*args)
        print(f"  {key}: done", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - one measure failing must not stop the rest
        results[key] = {"error": f"{type(e).__name__}: {e}"}
        print(f"  {key}: ERROR {type(e).__name__}: {e}", file=sys.stderr, flush=True)


MEASURES = ("throughput", "fanout", "chain", "callbacks", "big_stage", "listing", "rss",
            "two_servers", "schedule", "metrics", "limits", "events", "ui", "scale")


def run_backend(ctx, backend: str) -> dict:
    ctx.backend = backend
    results: dict = {"status": "ok"}
    wanted = ctx.wanted

    def step(key: str, fn, *args) -> None:
        if key in wanted:
            attempt(results, key, fn, *args)

    def with_server(label: str, key: str, body, env_extra=None, count=1) -> None:
        """
        Start C{count} servers on one fresh database, run C{body(*servers)},
        stop them; a failure is recorded under C{key}.
        """
        servers = []
        try:
            env = ctx.database_env(f"{backend}-{label}")
            for i in range(count):
                extra = (env_extra or (lambda i: {}))(i)
                servers.append(ctx.new_server(f"{backend}-{label}-{i}", {**env, **extra}))
            body(env, *servers)
        except Exception as e:  # noqa: BLE001 - report and go on
            results[key] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  {key}: ERROR {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        finally:
            for server in servers:
                server.stop()

    print(f"[{backend}] main server", file=sys.stderr, flush=True)
    try:
        main = ctx.new_server(f"{backend}-main", ctx.database_env(f"{backend}-main"))
    except ServerFailed as e:
        return {"status": "skipped", "reason": str(e)}
    try:
        results["server"] = {"start_ms": round(main.start_s * 1000, 1),
                             "idle_rss_mb": round((proc_status(main.pid, "VmRSS") or 0)
                                                  / 1024, 1)}
        spawner = Spawner()
        try:
            # Warm the page cache, bash, and the server's first requests.
            floor_parallel(ctx, spawner, 20)
            attempt(results, "warm_up", warm_up, ctx, main)
            step("throughput", measure_throughput, ctx, main, spawner)
            if "metrics" in wanted:
                # GET /metrics during throughput (benchmarks/metrics.py).
                from metrics import measure_metrics
                step("metrics", measure_metrics, ctx, main, throughput_trial)
            if "ui" in wanted:
                attempt(results, "ui_live_cost", ui_bench.measure_live_cost, ctx, main,
                        throughput_trial)
            step("fanout", measure_fanout, ctx, main, spawner)
            step("chain", measure_chain, ctx, main, spawner)
            step("callbacks", measure_callbacks, ctx, main, spawner)
            step("events", measure_events, ctx, main, throughput_trial,
                 lambda label: Profiler(ctx, main, label))
        finally:
            spawner.close()
        step("big_stage", measure_big_stage, ctx, main)
    finally:
        main.stop()

    if "listing" in wanted:
        print(f"[{backend}] listing server", file=sys.stderr, flush=True)

        def listing(env, server):
            n = ctx.counts["listing_runs"]
            if backend == "sqlite":
                server.stop()
                fill = fill_runs_sqlite(Path(env["MAXQ_SQLITE_PATH"]), n)
                server = ctx.new_server(f"{backend}-listing-filled", env)
            else:
                fill = fill_runs_postgres(env["MAXQ_DATABASE_URL"].rsplit("/", 1)[1], n)
            try:
                attempt(results, "listing", measure_listing, ctx, server, fill)
                if "ui" in wanted:
                    attempt(results, "ui_runs_page", ui_bench.measure_runs_page, ctx, server)
            finally:
                server.stop()

        with_server("listing", "listing", listing)

    if "ui" in wanted:
        print(f"[{backend}] web UI server", file=sys.stderr, flush=True)
        with_server("ui", "ui", lambda env, server: attempt(
            results, "ui", ui_bench.measure_run_page, ctx, server))

    if "rss" in wanted:
        print(f"[{backend}] RSS server", file=sys.stderr, flush=True)
        with_server("rss", "rss", lambda env, server: attempt(
            results, "rss", measure_rss, ctx, server),
            env_extra=lambda i: {"MAXQ_MAX_CONCURRENT_STEPS":
                                 str(max(ctx.counts["rss_steps"], 8))})

    if "limits" in wanted:
        # benchmarks/limits.py: a pool of 4 slots against plain concurrency 4.
        from limits import measure_limits

        print(f"[{backend}] limits servers", file=sys.stderr, flush=True)
        attempt(results, "limits", measure_limits, ctx, sys.modules[__name__])

    if backend == "postgres" and "two_servers" in wanted:
        print(f"[{backend}] two servers", file=sys.stderr, flush=True)
        with_server("two", "two_servers", lambda env, a, b: attempt(
            results, "two_servers", measure_two_servers, ctx, a, b),
            env_extra=lambda i: {"MAXQ_WORKER_ID": f"bench-{'ab'[i]}",
                                 "BENCH_SERVER": "ab"[i]},
            count=2)
        with_server("handoff", "two_server_handoff", lambda env, a, b: attempt(
            results, "two_server_handoff", measure_handoff, ctx, a, b),
            env_extra=lambda i: {"MAXQ_WORKER_ID": f"bench-{'ab'[i]}",
                                 "BENCH_SERVER": "ab"[i],
                                 "MAXQ_MAX_CONCURRENT_STEPS": "1"},
            count=2)

    if "scale" in wanted:
        # benchmarks/scale.py: 1,000,000 runs (issue 17).
        import scale as scale_measure

        print(f"[{backend}] scale", file=sys.stderr, flush=True)
        scale_measure.measure(sys.modules[__name__], ctx, results)

    if "schedule" in wanted:
        print(f"[{backend}] schedules", file=sys.stderr, flush=True)
        import schedules as schedule_measure  # benchmarks/schedules.py

        schedule_measure.measure(sys.modules[__name__], ctx, results)
    return results


# ------------------------------------------------------------------ targets


def _get(d: dict, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def evaluate(backend: str, res: dict) -> list[dict]:
    """
    One row per figure: value, floor, ratio, target and verdict.
    """
    pg = backend == "postgres"
    rows = []

    def row(measure, unit, value, floor_value=None, target=None, ok=None, binding=True):
        ratio = value / floor_value if value is not None and floor_value else None
        rows.append({
            "measure": measure, "unit": unit, "value": value, "floor": floor_value,
            "ratio": round(ratio, 2) if ratio is not None else None,
            "target": target,
            "result": None if ok is None else ("PASS" if ok else "FAIL"),
            "binding": binding,
        })

    def known(*values):
        return all(v is not None for v in values)

    tp, fl = _get(res, "throughput", "steps_per_s"), _get(res, "throughput",
                                                          "floor_spawns_per_s")
    k = 0.35 if pg else 0.5
    row("throughput", "steps/s", tp, fl,
        f">= {k} x floor ({round(k * fl, 1) if fl else '?'})",
        (tp >= k * fl) if known(tp, fl) else None)

    fo, fl = _get(res, "fanout", "wall_ms"), _get(res, "fanout", "floor_wall_ms")
    row(f"fan-out {_get(res, 'fanout', 'steps') or ''} wall", "ms", fo, fl,
        f"<= 2 x floor ({round(2 * fl, 1) if fl else '?'})",
        (fo <= 2 * fl) if known(fo, fl) else None, binding=not pg)

    for stat, slack in (("median_ms", 3), ("p95_ms", 10)):
        v, f = _get(res, "chain", "hop", stat), _get(res, "chain", "floor_hop", stat)
        row(f"chain hop {stat[:-3]}", "ms", v, f,
            f"<= floor + {slack} ({round(f + slack, 2) if f is not None else '?'})",
            (v <= f + slack) if known(v, f) else None, binding=not pg)

    for stat in ("median_ms", "p95_ms"):
        v = _get(res, "callbacks", "turnaround", stat)
        f = _get(res, "callbacks", "floor_turnaround", stat)
        is_median = stat == "median_ms"
        row(f"stage callback {stat[:-3]}", "ms", v, f, "<= 25" if is_median else None,
            (v <= 25) if (is_median and v is not None) else None, binding=not pg)

    big = _get(res, "big_stage", "accept_ms_max")
    row(f"accept {_get(res, 'big_stage', 'steps') or ''}-step stage (max)", "ms", big,
        target="<= 1000", ok=(big <= 1000) if big is not None else None, binding=not pg)

    p50, p95 = _get(res, "listing", "p50_ms"), _get(res, "listing", "p95_ms")
    n_runs = _get(res, "listing", "runs_in_db")
    row(f"GET /runs p50 ({n_runs or '?'} runs)", "ms", p50)
    row(f"GET /runs p95 ({n_runs or '?'} runs)", "ms", p95, target="<= 20",
        ok=(p95 <= 20) if p95 is not None else None, binding=not pg)
    row("GET /runs worst variant p95", "ms", _get(res, "listing", "worst_variant_p95_ms"))
    ui_bench.rows(res, row)

    rss = _get(res, "rss", "peak_rss_mb")
    seen = _get(res, "rss", "max_running_seen")
    row(f"RSS with {seen if seen is not None else '?'} steps running", "MB", rss,
        target="<= 250", ok=(rss <= 250) if rss is not None else None, binding=not pg)

    if pg:
        v = _get(res, "two_servers", "hop", "median_ms")
        row("2 servers (shared): chain hop median", "ms", v, target="<= 20",
            ok=(v <= 20) if v is not None else None)
        # Which server claims the next step is up to them (the one that
        # recorded the previous step usually wins), so hops from one server
        # to the other are few there; the handoff chain makes every hop one.
        for key, label in (("two_servers", "shared"), ("two_server_handoff", "handoff")):
            x = _get(res, key, "cross_server_hop", "median_ms")
            xn = _get(res, key, "cross_server_hop", "n") or 0
            row(f"2 servers ({label}): cross-server hop median (n={xn})", "ms", x,
                target="<= 20", ok=(x <= 20) if x is not None else None,
                binding=key == "two_server_handoff" and xn >= 5)
    if "schedule" in res:
        import schedules as schedule_measure  # benchmarks/schedules.py

        schedule_measure.evaluate(res, row)
    evaluate_events(res, pg, row)
    if "scale" in res:
        import scale as scale_measure  # benchmarks/scale.py

        scale_measure.evaluate(res, row)
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def print_table(report: dict) -> None:
    header = ("backend", "measure", "unit", "maxq", "floor", "ratio", "target", "result")
    lines = []
    for backend, data in report["backends"].items():
        if data.get("status") != "ok":
            lines.append((backend, f"SKIPPED: {data.get('reason', '').splitlines()[0]}",
                          "", "", "", "", "", ""))
            continue
        for r in data["targets"]:
            verdict = r["result"] or ""
            if verdict and not r["binding"]:
                verdict = verdict.lower() + " (info)"
            lines.append((backend, r["measure"], r["unit"], _fmt(r["value"]),
                          _fmt(r["floor"]), _fmt(r["ratio"]), r["target"] or "", verdict))
        for key, value in data.items():
            if isinstance(value, dict) and "error" in value:
                lines.append((backend, f"{key}: ERROR", "", "", "", "", "",
                              value["error"].splitlines()[0][:80]))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    out = [" | ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    out.append("-+-".join("-" * w for w in widths))
    out.extend(" | ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines)
    for backend, data in report["backends"].items():
        machine = [f"{key} busy {data[key]['machine'].get('busy_pct')}% "
                   f"steal {data[key]['machine'].get('steal_pct')}%"
                   for key in ("throughput", "fanout", "chain", "callbacks")
                   if isinstance(data.get(key), dict) and data[key].get("machine")]
        if machine:
            out.append(f"{backend} machine CPU (2 cores = 100%): " + "; ".join(machine))
        throughput = data.get("throughput")
        if isinstance(throughput, dict) and throughput.get("cpu_ceiling_ratio"):
            per = throughput["cpu_ms_per_step"]
            parts = " + ".join(f"{part.replace('_', ' ')} {per[part]:.2f}"
                               for part in CpuCost.PARTS if per[part] or part != "postgres")
            out.append(
                f"{backend} throughput CPU per step (ms): {parts} = {per['total']:.2f}; "
                f"floor {throughput['floor_cpu_ms_per_spawn']:.2f} per spawn; so with the "
                f"cores as busy as the floor's, at most "
                f"{throughput['cpu_ceiling_ratio']:.2f} x floor")
    print("\n".join(out))


# --------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="The MaxQ benchmark (issue 6).")
    p.add_argument("--backend", choices=("sqlite", "postgres", "all"), default="sqlite")
    p.add_argument("--json", metavar="FILE", help="also write the JSON report to FILE")
    p.add_argument("--quick", action="store_true",
                   help="small counts: a smoke test of a few seconds")
    p.add_argument("--only", metavar="LIST",
                   help="comma-separated measures to take (default all): "
                        + ",".join(MEASURES))
    p.add_argument("--profile", metavar="DIR",
                   help="record the server with py-spy during throughput, fan-out, "
                        "chain, callbacks and the big stage; folded stacks go to DIR")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    counts = dict(QUICK if args.quick else FULL)
    import schedules as schedule_measure  # benchmarks/schedules.py

    counts.update(schedule_measure.QUICK if args.quick else schedule_measure.FULL)
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    load_start = load_average()
    print(f"load at start: {load_start}", flush=True)
    module = maxq_module()
    report: dict = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "mode": "quick" if args.quick else "full",
            "counts": counts,
            "load_start": load_start,
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "server_settings": {"MAXQ_MAX_CONCURRENT_STEPS": 8,
                                "scheduler": "defaults (interval 200 ms, batch 10)",
                                "rss_server_MAXQ_MAX_CONCURRENT_STEPS": counts["rss_steps"]},
            "maxq_module": module,
            # The checkout's commit, when the server runs this checkout's maxq.
            **(git_describe() if module and module.startswith(str(REPO)) else {}),
        },
        "floor_method": FLOOR_METHOD,
        "backends": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="maxq-bench-"))
    ctx = Context(args, counts, workdir)
    status = 0
    try:
        write_flows(ctx.flows_root, ctx.ts_dir, counts)
        for backend in backends:
            if backend == "postgres":
                why = postgres_reachable()
                if why:
                    report["backends"]["postgres"] = {
                        "status": "skipped", "reason": f"PostgreSQL not available: {why}"}
                    print(f"[postgres] skipped: {why}", file=sys.stderr, flush=True)
                    continue
            res = run_backend(ctx, backend)
            if res["status"] == "ok":
                res["targets"] = evaluate(backend, res)
            else:
                print(f"[{backend}] skipped: {res['reason']}", file=sys.stderr, flush=True)
            report["backends"][backend] = res
        if ctx.profiles:
            report["profiles"] = ctx.profiles
    except (BenchError, OSError) as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        report["error"] = str(e)
        status = 1
    except (KeyboardInterrupt, Interrupted):
        print("interrupted", file=sys.stderr)
        status = 1
        raise
    finally:
        for server in ctx.servers:
            server.stop()
        for db in ctx.pg_dbs:
            try:
                pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            except Exception as e:  # noqa: BLE001 - best effort cleanup
                print(f"could not drop database {db}: {e}", file=sys.stderr)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}", file=sys.stderr)
        load_end = load_average()
        report["meta"]["load_end"] = load_end
    print()
    print_table(report)
    print()
    print(f"load at start: {load_start}")
    print(f"load at end:   {load_end}")
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
