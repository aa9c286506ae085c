#!/usr/bin/env python3
"""
The web UI's benchmark (issue 16), called from benchmarks/run.py:

- ``measure_run_page(ctx, server)``: a run of ``ui_run_steps`` steps (10
  stages; each step depends on two steps of the stage before, the first
  stage in two layers, the last stage pending behind a gate step), about
  two dependencies per step.  Reports the server's render time of
  ``GET /ui/runs/{id}`` (client-observed on 127.0.0.1, median and p95 of
  ``ui_requests``), the layout alone (in this process, same code), and,
  when Chromium and chromedriver are installed, the time to
  DOMContentLoaded and to the graph drawn (``performance.mark`` set by the
  page's graph script) in headless Chromium.  Targets: render ≤ 300 ms,
  layout ≤ 200 ms, browser ≤ 2 s.
- ``measure_runs_page(ctx, server)``: ``GET /ui/runs`` against the listing
  server (100,000 runs in the full benchmark); target ≤ 100 ms.
- ``measure_live_cost(ctx, server, trial)``: run.py's throughput trial,
  alternately alone and with ``ui_live_tabs`` tabs of headless Chromium on
  ``/ui/runs`` (each following the runs live: the tabs share the browser's
  one event stream, and each fetches a row again for each run event;
  before they shared it, the seventh tab's page never loaded: six
  connections per server, each held by a tab's EventSource), ``repeats``
  times each; the cost is
  1 - (steps/s with the tabs) / (steps/s alone), medians.  Target ≤ 15%.

    .venv/bin/python benchmarks/run.py --only ui,listing [--quick]
"""

from __future__ import annotations

import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

FULL = {"ui_run_steps": 1000, "ui_requests": 20, "ui_browser_loads": 5, "ui_live_tabs": 20}
QUICK = {"ui_run_steps": 100, "ui_requests": 5, "ui_browser_loads": 2, "ui_live_tabs": 3}
STAGES = 10
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync")
TARGETS = {"render_ms": 300, "layout_ms": 200, "browser_ms": 2000, "runs_page_ms": 100,
           "live_cost_pct": 15}


def write_flows(root: Path) -> None:
    """
    ``bench_ui``: flow.sh waits (the benchmark posts the stages), ``noop``
    steps exit at once, the ``hold`` step waits until the run is aborted.
    """
    for rel, text in (("bench_ui/flow.sh", "#!/bin/bash\nexec sleep 300\n"),
                      ("bench_ui/steps/noop/step.sh", "#!/bin/bash\nexit 0\n"),
                      ("bench_ui/steps/hold/step.sh", "#!/bin/bash\nexec sleep 300\n")):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)


def _stages(n_steps: int, seed: int = 16) -> list[list[dict]]:
    rng = random.Random(seed)
    per = max(n_steps // STAGES, 4)
    stages: list[list[dict]] = []
    for k in range(STAGES):
        steps = []
        for j in range(per):
            sid = f"s{k}-{j}"
            if k == 0:
                deps = ([f"s0-{i}" for i in rng.sample(range(per // 2), 2)]
                        if j >= per // 2 else [])
            else:
                deps = [f"s{k - 1}-{i}" for i in rng.sample(range(per), 2)]
            name = "noop"
            if k == STAGES - 1:
                if j == 0:
                    sid, name = "gate", "hold"
                    deps = deps + [f"s{k - 1}-{(per - 1) // 2}"]
                else:
                    deps = deps + ["gate"]
            steps.append({"id": sid, "name": name, "maxRetries": 0, "dependsOn": deps})
        stages.append(steps)
    return stages


def _get(port: int, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, (time.perf_counter() - t0) * 1000, resp
    finally:
        conn.close()


def _session(port: int) -> dict:
    status, _, _, resp = _get(port, "/ui/runs")
    cookie = resp.getheader("Set-Cookie") or ""
    return {"Cookie": cookie.split(";")[0]} if cookie else {}


def _summary(times: list[float]) -> dict:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"n": len(times), "median_ms": round(statistics.median(times), 1),
            "p95_ms": round(p95, 1), "max_ms": round(max(times), 1)}


def _build_run(ctx, server) -> tuple[str, int, int]:
    c = server.client
    stages = _stages(ctx.counts["ui_run_steps"])
    run_id = c.call("POST", "/api/v1/flows/bench_ui/runs", {})["id"]
    c.wait_status(run_id, ("running",), 30, "ui bench: run start")
    for k, steps in enumerate(stages):
        c.call("POST", f"/api/v1/runs/{run_id}/steps",
               {"stage": f"stage-{k}", "final": False, "steps": steps}, expect=(201,))
        if k < STAGES - 1:
            deadline = time.monotonic() + 120
            while True:
                page = c.call("GET", f"/api/v1/runs/{run_id}/steps?stage=stage-{k}"
                              f"&status=completed&limit=1")
                if page["pagination"]["total"] == len(steps):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stage-{k} did not complete")
                time.sleep(0.05)
    n_steps = sum(len(s) for s in stages)
    n_edges = sum(len(st["dependsOn"]) for s in stages for st in s)
    return run_id, n_steps, n_edges


def _layout_ms(server, run_id: str) -> float:
    from maxq.ui import layout as dag

    steps, offset = [], 0
    while True:
        page = server.client.call("GET", f"/api/v1/runs/{run_id}/steps?limit=1000"
                                         f"&offset={offset}")
        steps += [{"id": s["id"], "stage": s["stage"], "name": s["name"],
                   "status": s["status"], "depends_on": s["dependsOn"]}
                  for s in page["steps"]]
        offset += len(page["steps"])
        if not page["steps"] or offset >= page["pagination"]["total"]:
            break
    run = server.client.call("GET", f"/api/v1/runs/{run_id}")
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        dag.layout(steps, run.get("stages"))
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


def _have_browser() -> bool:
    return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="maxq-bench-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1280,900")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def _browser(port: int, path: str, loads: int) -> dict:
    if not _have_browser():
        return {"skipped": "no Chromium or chromedriver"}
    driver = _driver()
    try:
        url = f"http://127.0.0.1:{port}{path}"
        dcl, drawn = [], []
        driver.get(url)  # the session cookie, and a warm cache
        for _ in range(loads):
            driver.get(url)
            deadline = time.monotonic() + 30
            while True:
                timing = driver.execute_script(
                    "const n = performance.getEntriesByType('navigation')[0];"
                    "const m = performance.getEntriesByName('maxq-graph-drawn')[0];"
                    "return n && m ? [n.domContentLoadedEventEnd, m.startTime] : null")
                if timing:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the graph was not drawn")
                time.sleep(0.02)
            dcl.append(timing[0])
            drawn.append(max(timing))
        return {"dom_content_loaded": _summary(dcl), "graph_drawn": _summary(drawn)}
    finally:
        driver.quit()


def measure_run_page(ctx, server) -> dict:
    run_id, n_steps, n_edges = _build_run(ctx, server)
    try:
        headers = _session(server.port)
        path = f"/ui/runs/{run_id}"
        for _ in range(2):
            _get(server.port, path, headers)
        times, size = [], 0
        for _ in range(ctx.counts["ui_requests"]):
            status, body, ms, _ = _get(server.port, path, headers)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")
            times.append(ms)
            size = len(body)
        out = {"steps": n_steps, "edges": n_edges, "page_bytes": size,
               "render": _summary(times), "layout_ms": _layout_ms(server, run_id)}
        try:
            out["browser"] = _browser(server.port, path, ctx.counts["ui_browser_loads"])
        except Exception as e:  # noqa: BLE001 - the server figures stand alone
            out["browser"] = {"error": f"{type(e).__name__}: {e}"}
        return out
    finally:
        server.client.call("POST", f"/api/v1/runs/{run_id}/abort", {})


def measure_runs_page(ctx, server) -> dict:
    headers = _session(server.port)
    for _ in range(3):
        _get(server.port, "/ui/runs", headers)
    times = []
    for _ in range(ctx.counts["ui_requests"]):
        status, _, ms, _ = _get(server.port, "/ui/runs", headers)
        if status != 200:
            raise RuntimeError(f"GET /ui/runs answered {status}")
        times.append(ms)
    return {"runs_page": _summary(times)}


def _cpu_s(pid: int | None = None, comm_prefix: str | None = None) -> float:
    """
    User + system CPU seconds so far of process C{pid}, or of every process
    whose name starts with C{comm_prefix} (Chromium's).
    """
    total = 0.0
    pids = [str(pid)] if pid is not None else [e for e in os.listdir("/proc") if e.isdigit()]
    for entry in pids:
        try:
            if comm_prefix is not None and not Path(
                    f"/proc/{entry}/comm").read_text().startswith(comm_prefix):
                continue
            text = Path(f"/proc/{entry}/stat").read_text()
            fields = text[text.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
    return total


def _timed_trial(server, trial, runs_n: int, cpu: dict, label: str) -> float:
    """
    One throughput trial's wall time, adding the server's and the browser's
    CPU seconds during it to C{cpu[label]}.
    """
    s0, b0 = _cpu_s(server.pid), _cpu_s(comm_prefix="chrom")
    wall, _ = trial(server, runs_n)
    spent = cpu.setdefault(label, {"server": 0.0, "browser": 0.0})
    spent["server"] += _cpu_s(server.pid) - s0
    spent["browser"] += _cpu_s(comm_prefix="chrom") - b0
    return wall


def measure_live_cost(ctx, server, trial) -> dict:
    if not _have_browser():
        return {"skipped": "no Chromium or chromedriver"}
    runs_n = ctx.counts["throughput_runs"]
    steps = runs_n * ctx.counts["throughput_steps"]
    alone, watched = [], []
    # CPU seconds of the server and of Chromium over all trials of each kind.
    cpu: dict = {}
    driver = _driver()
    try:
        url = f"http://127.0.0.1:{server.port}/ui/runs"
        driver.get(url)
        for _ in range(ctx.counts["ui_live_tabs"] - 1):
            driver.switch_to.new_window("tab")
            driver.get(url)
        for _ in range(ctx.counts["repeats"]):
            # The tabs stay open; "alone" trials run with them closed over
            # to about:blank (same browser process, no stream, no fetches).
            for handle in driver.window_handles:
                driver.switch_to.window(handle)
                driver.get("about:blank")
            wall = _timed_trial(server, trial, runs_n, cpu, "alone")
            alone.append(steps / wall)
            for handle in driver.window_handles:
                driver.switch_to.window(handle)
                driver.get(url)
            time.sleep(1)  # every stream connected
            wall = _timed_trial(server, trial, runs_n, cpu, "watched")
            watched.append(steps / wall)
    finally:
        driver.quit()
    a, w = statistics.median(alone), statistics.median(watched)
    return {"tabs": ctx.counts["ui_live_tabs"], "steps_per_s_alone": round(a, 1),
            "steps_per_s_watched": round(w, 1),
            "alone_all": [round(x, 1) for x in alone],
            "watched_all": [round(x, 1) for x in watched],
            "cpu_s": {k: {who: round(v, 2) for who, v in spent.items()}
                      for k, spent in cpu.items()},
            "cost_pct": round(max(0.0, 1 - w / a) * 100, 1)}


def rows(res: dict, row) -> None:
    """
    The UI's lines of the report table (C{row} is run.py's).
    """
    ui = res.get("ui") or {}
    render = (ui.get("render") or {}).get("median_ms")
    row("UI run page render (median)", "ms", render, target=f"≤ {TARGETS['render_ms']}",
        ok=None if render is None else render <= TARGETS["render_ms"])
    layout = ui.get("layout_ms")
    row("UI DAG layout", "ms", layout, target=f"≤ {TARGETS['layout_ms']}",
        ok=None if layout is None else layout <= TARGETS["layout_ms"])
    drawn = ((ui.get("browser") or {}).get("graph_drawn") or {}).get("median_ms")
    row("UI run page in Chromium (graph drawn)", "ms", drawn,
        target=f"≤ {TARGETS['browser_ms']}",
        ok=None if drawn is None else drawn <= TARGETS["browser_ms"])
    cost = (res.get("ui_live_cost") or {}).get("cost_pct")
    row("UI live tabs' cost to throughput", "%", cost,
        target=f"≤ {TARGETS['live_cost_pct']}",
        ok=None if cost is None else cost <= TARGETS["live_cost_pct"])
    page = ((res.get("ui_runs_page") or {}).get("runs_page") or {}).get("median_ms")
    row("UI runs page (median)", "ms", page, target=f"≤ {TARGETS['runs_page_ms']}",
        ok=None if page is None else page <= TARGETS["runs_page_ms"])


if __name__ == "__main__":
    sys.exit("run it through benchmarks/run.py --only ui,listing")
