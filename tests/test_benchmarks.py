"""
The benchmark command runs and reports every figure (benchmarks/run.py
--quick).  Nothing here looks at how fast anything was.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

MEASURES = ("throughput", "fanout", "chain", "callbacks", "big_stage", "listing", "rss")


@pytest.mark.long
def test_quick_benchmark_reports_every_measure(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick",
         "--backend", "sqlite", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"meta", "floor_method", "backends"} <= set(report)
    assert report["meta"]["mode"] == "quick"
    assert "load_start" in report["meta"] and "load_end" in report["meta"]
    sqlite = report["backends"]["sqlite"]
    assert sqlite["status"] == "ok"
    for key in MEASURES:
        assert key in sqlite, key
        assert "error" not in sqlite[key], (key, sqlite[key])
    for key in ("steps_per_s", "floor_spawns_per_s", "floor_cpu_ms_per_spawn",
                "cpu_ceiling_ratio"):
        assert isinstance(sqlite["throughput"][key], (int, float)), key
    cpu = sqlite["throughput"]["cpu_ms_per_step"]
    assert cpu["steps_and_flows"] > 0 and cpu["server"] >= 0
    assert cpu["postgres"] == 0  # SQLite: no PostgreSQL process is counted
    assert cpu["total"] >= cpu["steps_and_flows"] + cpu["server"] - 0.01  # rounding
    for key in ("wall_ms", "floor_wall_ms"):
        assert isinstance(sqlite["fanout"][key], (int, float))
    for key in ("hop", "floor_hop"):
        assert sqlite["chain"][key]["n"] > 0
    for key in ("turnaround", "floor_turnaround"):
        assert sqlite["callbacks"][key]["n"] > 0
    assert sqlite["big_stage"]["accept_ms"]
    assert sqlite["listing"]["runs_in_db"] >= report["meta"]["counts"]["listing_runs"]
    assert sqlite["rss"]["peak_rss_mb"] > 0
    assert sqlite["targets"] and all(
        {"measure", "value", "target", "result"} <= set(row) for row in sqlite["targets"])
    # The table went to stdout too.
    assert "throughput" in proc.stdout and "load at end" in proc.stdout
    assert "throughput CPU per step" in proc.stdout
