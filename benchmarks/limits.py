"""
The "limits" measure of benchmarks/run.py (issue 13): runs of independent
steps through a pool, against the same runs on a plain server whose
concurrency equals the pool's slots.

- pooled: one server at MAXQ_MAX_CONCURRENT_STEPS=8 with MAXQ_POOLS
  "bench=4"; every step names the pool.  The pool must never be exceeded,
  checked from the steps' own start and end times (no more than 4 of those
  intervals ever overlap).
- plain: one server at MAXQ_MAX_CONCURRENT_STEPS=4, no pool, same steps.

Each step sleeps 20 ms between its two timestamps, so that the slots, not
the spawn rate, bound both servers; the target is pooled throughput at
least 0.9 x plain.  Both servers run in the same session, one after the
other, each on a fresh database.
"""

from __future__ import annotations

import json
import time

POOL_SLOTS = 4
STEP_PAUSE_S = 0.02

STEP = """#!/bin/bash
s=$EPOCHREALTIME
sleep {pause}
e=$EPOCHREALTIME
printf '%s000 %s000\\n' "${{s/[.,]/}}" "${{e/[.,]/}}" > "{dir}/${{MAXQ_RUN_ID}}_${{MAXQ_STEP_ID}}"
"""


def most_overlapping(spans) -> int:
    """
    The largest number of the C{(start, end)} intervals open at once.
    """
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    open_now = best = 0
    for _, delta in events:
        open_now += delta
        best = max(best, open_now)
    return best


def write_flows(bench, root, ts_dir, steps_n: int) -> None:
    for name, extra in (("bench_limits_pool", {"pool": "bench"}), ("bench_limits_plain", {})):
        steps = [{"id": f"s{i:03d}", "name": "slot", "maxRetries": 0, **extra}
                 for i in range(steps_n)]
        bench._write(root / name / "flow.sh", bench.STATIC_FLOW, True)
        bench._write(root / name / "stage.json", json.dumps(
            bench._stage_body("main", steps), separators=(",", ":")))
        bench._write(root / name / "steps" / "slot" / "step.sh",
                     STEP.format(pause=STEP_PAUSE_S, dir=ts_dir), True)


def _trial(bench, ctx, server, flow: str, runs_n: int, steps_n: int) -> dict:
    c = server.client
    bench.warm_up(ctx, server)
    t0 = time.time()
    ids = [c.trigger(flow)["id"] for _ in range(runs_n)]
    runs = [c.wait_run(i, 300, f"limits {flow}") for i in ids]
    failed = [r["id"] for r in runs if r["status"] != "completed"]
    if failed:
        raise bench.BenchError(f"{len(failed)} runs of {flow} did not complete")
    wall = max(r["completedAt"] for r in runs) / 1000.0 - t0
    spans = []
    for run_id in ids:
        for i in range(steps_n):
            start, end, _ = bench.read_ts(ctx.ts_dir, run_id, f"s{i:03d}")
            spans.append((start, end))
    return {"steps": len(spans), "wall_s": round(wall, 3),
            "steps_per_s": round(len(spans) / wall, 1),
            "most_overlapping": most_overlapping(spans)}


def measure_limits(ctx, bench) -> dict:
    """
    C{bench} is benchmarks/run.py (its server, client and helpers).
    """
    runs_n, steps_n = ctx.counts["limits_runs"], ctx.counts["limits_steps"]
    write_flows(bench, ctx.flows_root, ctx.ts_dir, steps_n)
    out = {"runs": runs_n, "steps_per_run": steps_n, "pool_slots": POOL_SLOTS,
           "step_pause_s": STEP_PAUSE_S}
    for key, flow, env in (
        ("plain", "bench_limits_plain", {"MAXQ_MAX_CONCURRENT_STEPS": str(POOL_SLOTS)}),
        ("pooled", "bench_limits_pool", {"MAXQ_MAX_CONCURRENT_STEPS": "8",
                                         "MAXQ_POOLS": f"bench={POOL_SLOTS}"}),
    ):
        server = ctx.new_server(f"{ctx.backend}-limits-{key}",
                                {**ctx.database_env(f"{ctx.backend}-limits-{key}"), **env})
        try:
            out[key] = _trial(bench, ctx, server, flow, runs_n, steps_n)
        finally:
            server.stop()
    out["pool_held"] = out["pooled"]["most_overlapping"] <= POOL_SLOTS
    out["throughput_ratio"] = round(
        out["pooled"]["steps_per_s"] / out["plain"]["steps_per_s"], 3)
    out["target_met"] = out["pool_held"] and out["throughput_ratio"] >= 0.9
    return out
