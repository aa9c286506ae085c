"""
Flow control with two MaxQ servers, each a real process, claiming from one
PostgreSQL database at once (SPEC §6: limits hold across every server): a
one-slot pool and a C{maxActiveRuns: 1} flow are never exceeded, and steps
that require a label run only on the server that has it.  Overlap is
measured from the times the step scripts write themselves.
"""

from __future__ import annotations

from pathlib import Path

from .subprocess_server import subprocess_servers  # noqa: F401 (fixture)
from .test_flow_control import most_overlapping

# "<start ns> <end ns> <server port> <run> <step>" per execution.
STEP = """
start=$(date +%s%N)
sleep "${PAUSE:-0.05}"
port=${MAXQ_API#http://127.0.0.1:}; port=${port%%/*}
echo "$start $(date +%s%N) $port $MAXQ_RUN_ID $MAXQ_STEP_ID" >> "$OUT/$KIND"
"""

# A stage of $STEPS steps, with the maxq_step options of $OPTIONS.
FLOW = """
if [ -z "$MAXQ_COMPLETED_STAGE" ]; then
  . "$MAXQ_LIB"
  steps=""
  for i in $(seq 1 "$STEPS"); do
    steps="$steps$(maxq_step "s$i" mark env.KIND="$KIND" $OPTIONS)"
  done
  maxq_schedule work --final "$steps" >/dev/null
fi
"""

CLUSTER = {
    "MAXQ_WORKER_HEARTBEAT_MS": "200",
    "MAXQ_WORKER_TIMEOUT_MS": "3000",
    "MAXQ_MAX_CONCURRENT_STEPS": "4",
    "MAXQ_POOLS": "one=1",
}


def spans(out: Path, kind: str) -> list[tuple[int, int, str, str, str]]:
    path = out / kind
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        start, end, port, run, step = line.split()
        rows.append((int(start), int(end), port, run, step))
    return rows


def make_flows(root: Path, out: Path) -> None:
    specs = {
        "pooled": ("STEPS=3 OPTIONS=pool=one KIND=pooled", None),
        "single": ("STEPS=1 OPTIONS= KIND=single", "maxActiveRuns: 1\n"),
        "gpu": ("STEPS=4 OPTIONS=requires=gpu KIND=gpu", None),
        "plain": ("STEPS=4 OPTIONS= KIND=plain", None),
    }
    for name, (settings, flow_yaml) in specs.items():
        flow = root / name
        (flow / "steps" / "mark").mkdir(parents=True)
        exports = "\n".join(f"export {kv}" for kv in settings.split())
        (flow / "flow.sh").write_text(f"#!/usr/bin/env bash\nset -e\n{exports}\n{FLOW}")
        (flow / "steps" / "mark" / "step.sh").write_text(
            f'#!/usr/bin/env bash\nOUT="{out}"\n{STEP}')
        for script in (flow / "flow.sh", flow / "steps" / "mark" / "step.sh"):
            script.chmod(0o755)
        if flow_yaml:
            (flow / "flow.yaml").write_text(flow_yaml)


async def test_limits_hold_while_two_servers_claim(postgres_schema, subprocess_servers,  # noqa: F811
                                                   tmp_path, reactor):
    _server, _schema, url = postgres_schema
    out = tmp_path / "out"
    out.mkdir()
    make_flows(tmp_path / "flows", out)
    a = await subprocess_servers("a", env={
        "MAXQ_DATABASE_URL": url, "MAXQ_WORKER_ID": "a", "MAXQ_WORKER_LABELS": "gpu",
        **CLUSTER}).start()
    b = await subprocess_servers("b", env={
        "MAXQ_DATABASE_URL": url, "MAXQ_WORKER_ID": "b", **CLUSTER}).start()
    runs = []
    for i in range(6):
        for flow in ("pooled", "single", "gpu", "plain"):
            server = a if i % 2 else b
            status, run = await server.post(f"/flows/{flow}/runs", {})
            assert status == 201, run
            runs.append(run["id"])
    for run_id in runs:
        run = await a.wait_run(run_id, timeout=120)
        assert run["status"] == "completed", run
    port_a = a.url.rsplit(":", 1)[1]
    port_b = b.url.rsplit(":", 1)[1]

    pooled = spans(out, "pooled")
    assert len(pooled) == 18
    assert most_overlapping(pooled) == 1, "the one-slot pool was exceeded"

    # Each run of "single" is one step: no two of those ever overlap.  (The
    # runs' own startedAt is taken when the claim begins, which may be a
    # moment before the run it waited for is recorded as completed.)
    singles = spans(out, "single")
    assert len(singles) == 6
    assert most_overlapping(singles) == 1, "maxActiveRuns: 1 was exceeded"

    gpu = spans(out, "gpu")
    assert len(gpu) == 24
    assert {port for _s, _e, port, _r, _st in gpu} == {port_a}, \
        "a step requiring gpu ran on the server without the label"
    plain = spans(out, "plain")
    assert len(plain) == 24
    everywhere = {port for _s, _e, port, _r, _st in pooled + plain}
    assert everywhere == {port_a, port_b}, "both servers claimed work"
    _, pools = await b.get("/pools")
    assert pools == {"pools": [{"name": "one", "slots": 1, "used": 0, "waiting": 0}]}
