"""
The "schedule" measure of the MaxQ benchmark (issue 12), called by
``benchmarks/run.py`` (``--only schedule``) with the running benchmark
module (its ``Server``, ``pct``, ``proc_cpu_s`` and the like).

- lateness: ``SCHEDULE_FLOWS`` flows (100; ``--quick`` 5) with
  ``schedule: "@every 1s"`` (overlap ``allow``) for ``SCHEDULE_S`` seconds
  (30; quick 4), on one server (SQLite) or on two sharing the database
  (PostgreSQL).  Each ``flow.sh`` appends its fire time
  (``MAXQ_SCHEDULED_AT``) and the time it started (bash ``$EPOCHREALTIME``);
  lateness = start - fire time, median and p95.  Runs made (counted from
  the API) are set against the fire times of the window (flows x seconds):
  they must be equal, and no fire time may have two runs.  The schedules
  are removed from flow.yaml once the window is over, so that the counting
  does not compete with the fires.
- idle: ``IDLE_FLOWS`` flows (1,000; quick 50) with ``schedule: "0 * * * *"``
  waiting for the next hour: the server's CPU over ``IDLE_S`` seconds (20;
  quick 3), as a percentage of one core (target < 1 %).  The window is
  moved past the top of an hour when it would cross one.

Each part gets a flows root and a database of its own, so it leaves no
schedule behind for the other measures.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime, timezone

FULL = {"schedule_flows": 100, "schedule_s": 30, "idle_flows": 1000, "idle_s": 20}
QUICK = {"schedule_flows": 5, "schedule_s": 4, "idle_flows": 50, "idle_s": 3}

FLOW = """#!/bin/bash
printf '%s %s\\n' "$MAXQ_SCHEDULED_AT" "$EPOCHREALTIME" >> "{out}/$MAXQ_FLOW_NAME"
"""
IDLE_FLOW = "#!/bin/bash\nexit 0\n"


def _write_flows(root, n: int, yaml: str, body: str) -> None:
    for i in range(n):
        d = root / f"s{i:04d}"
        d.mkdir(parents=True)
        script = d / "flow.sh"
        script.write_text(body)
        script.chmod(0o755)
        (d / "flow.yaml").write_text(yaml)


def _iso_ms(text: str) -> int:
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def _servers(bench, ctx, label: str, root, count: int):
    env = ctx.database_env(f"{ctx.backend}-{label}")
    servers = []
    for i in range(count):
        server = bench.Server(f"{ctx.backend}-{label}-{i}", ctx.workdir, root,
                              {**env, "MAXQ_WORKER_ID": f"bench-{label}-{i}"})
        ctx.servers.append(server)
        servers.append(server.start())
    return servers


def _wait_listed(bench, server, n: int, timeout_s: float = 60.0,
                 exactly: bool = False) -> None:
    deadline = bench.Deadline(timeout_s, f"{n} schedules listed")
    while True:
        body = server.client.call("GET", "/api/v1/schedules")
        listed = len(body["schedules"])
        if listed == n or (listed >= n and not exactly):
            return
        deadline.check()
        time.sleep(0.1)


def measure_lateness(bench, ctx) -> dict:
    n, seconds = ctx.counts["schedule_flows"], ctx.counts["schedule_s"]
    root = ctx.workdir / f"schedule-flows-{ctx.backend}"
    out = ctx.workdir / f"schedule-out-{ctx.backend}"
    out.mkdir()
    _write_flows(root, n, 'schedule: "@every 1s"\noverlap: allow\n',
                 FLOW.format(out=out))
    servers = _servers(bench, ctx, "schedule", root, 2 if ctx.backend == "postgres" else 1)
    try:
        _wait_listed(bench, servers[0], n)
        cpu0 = [bench.proc_cpu_s(s.pid) for s in servers]
        # The window: whole seconds, starting after every flow was seen.
        start_ms = (int(time.time()) + 2) * 1000
        end_ms = start_ms + seconds * 1000
        time.sleep(max(0.0, end_ms / 1000 - time.time()) + 2.0)
        cpu1 = [bench.proc_cpu_s(s.pid) for s in servers]
        # The schedules end with the window (flow.yaml without one, seen
        # within 2 s): counting the runs through the API then does not
        # compete with a hundred fires a second.
        for i in range(n):
            (root / f"s{i:04d}" / "flow.yaml").write_text("overlap: allow\n")
        _wait_listed(bench, servers[0], 0, exactly=True)
        time.sleep(1.0)
        runs_made, doubled = 0, 0
        for i in range(n):
            body = servers[0].client.call(
                "GET", f"/api/v1/runs?flowName=s{i:04d}&limit=100&sortBy=createdAt")
            times = [r["scheduledAt"] for r in body["runs"]
                     if r["scheduledAt"] is not None and start_ms < r["scheduledAt"] <= end_ms]
            runs_made += len(set(times))
            doubled += len(times) - len(set(times))
    finally:
        for server in servers:
            server.stop()
    lateness = []
    for path in out.iterdir():
        for line in path.read_text().splitlines():
            at, started = line.split()
            fire = _iso_ms(at)
            if start_ms < fire <= end_ms:
                lateness.append(float(started) * 1000 - fire)
    fire_times = n * seconds
    server_cpu_s = sum(b - a for a, b in zip(cpu0, cpu1) if a is not None and b is not None)
    return {
        "flows": n, "seconds": seconds, "servers": len(servers),
        "fire_times": fire_times, "runs_made": runs_made, "doubled": doubled,
        "flow_starts": len(lateness),
        "lateness": {
            "n": len(lateness),
            "median_ms": round(statistics.median(lateness), 2) if lateness else None,
            "p95_ms": round(bench.pct(lateness, 95), 2) if lateness else None,
            "max_ms": round(max(lateness), 2) if lateness else None,
        },
        "server_cpu_pct_of_core": round(100 * server_cpu_s / (seconds + 2), 1),
    }


def measure_idle(bench, ctx) -> dict:
    n, seconds = ctx.counts["idle_flows"], ctx.counts["idle_s"]
    root = ctx.workdir / f"idle-flows-{ctx.backend}"
    _write_flows(root, n, 'schedule: "0 * * * *"\n', IDLE_FLOW)
    (server,) = _servers(bench, ctx, "idle", root, 1)
    try:
        _wait_listed(bench, server, n)
        time.sleep(2.0)
        # Keep the window clear of the top of an hour (every flow fires then).
        to_hour = 3600 - time.time() % 3600
        if to_hour < seconds + 5:
            time.sleep(to_hour + 5)
        cpu0, t0 = bench.proc_cpu_s(server.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = bench.proc_cpu_s(server.pid), time.monotonic()
    finally:
        server.stop()
    return {"flows": n, "seconds": round(t1 - t0, 2),
            "server_cpu_pct_of_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 2)}


def measure(bench, ctx, results: dict) -> None:
    """
    Take both parts into C{results["schedule"]}.
    """
    part: dict = {}
    bench.attempt(part, "lateness", measure_lateness, bench, ctx)
    bench.attempt(part, "idle", measure_idle, bench, ctx)
    results["schedule"] = part


def evaluate(res: dict, row) -> None:
    """
    The rows of the targets table, through run.py's C{row}.
    """
    late = (res.get("schedule") or {}).get("lateness") or {}
    idle = (res.get("schedule") or {}).get("idle") or {}
    lateness = late.get("lateness") or {}
    p95 = lateness.get("p95_ms")
    row("schedule fire -> flow.sh median", "ms", lateness.get("median_ms"))
    row("schedule fire -> flow.sh p95", "ms", p95, target="<= 100",
        ok=(p95 <= 100) if p95 is not None else None,
        binding=late.get("servers") == 1)
    made, fires = late.get("runs_made"), late.get("fire_times")
    row(f"schedule runs made / fire times ({fires})", "runs", made, target=f"== {fires}",
        ok=(made == fires and late.get("doubled") == 0) if made is not None else None)
    cpu = idle.get("server_cpu_pct_of_core")
    row(f"CPU, {idle.get('flows', '?')} schedules waiting", "% core", cpu,
        target="< 1", ok=(cpu < 1) if cpu is not None else None)


if __name__ == "__main__":
    print(json.dumps({"full": FULL, "quick": QUICK}))
