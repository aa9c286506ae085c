"""
Several MaxQ servers on one PostgreSQL database, each a real process: work
is shared and runs once, a killed server's work is taken back, an abort
reaches the server running the process, and a database restart loses
nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from twisted.internet import threads

from .conftest import pids_alive
from .subprocess_server import free_port, subprocess_servers  # noqa: F401 (fixture)

STEP = """
# One marker file per execution: <step>.<server port>.<pid>
port=${MAXQ_API#http://127.0.0.1:}; port=${port%%/*}
echo "$$" > "$OUT/$MAXQ_RUN_ID.$MAXQ_STEP_ID.$port.$$"
sleep "${PAUSE:-0}"
"""

FLOW = """
if [ -z "$MAXQ_COMPLETED_STAGE" ]; then
  steps=$(python3 -c '
import json, os
n = int(os.environ["STEPS"])
print(json.dumps([{"id": f"s{i}", "name": "mark", "maxRetries": 0,
                   "env": {"PAUSE": os.environ.get("PAUSE", "0")}} for i in range(n)]))')
  curl -sS --fail-with-body -H 'Content-Type: application/json' \\
    -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" \\
    -d "{\\"stage\\": \\"work\\", \\"final\\": true, \\"steps\\": $steps}" >/dev/null
fi
"""

FAST_CLUSTER = {
    "MAXQ_WORKER_HEARTBEAT_MS": "200",
    "MAXQ_WORKER_TIMEOUT_MS": "1500",
    "MAXQ_MAX_CONCURRENT_STEPS": "4",
}


def markers(out: Path, run_id: str) -> dict[str, list[str]]:
    """
    step id -> ports of the servers that ran it, one entry per execution.
    """
    found: dict[str, list[str]] = {}
    for path in out.glob(f"{run_id}.*"):
        _run, step, port, _pid = path.name.rsplit(".", 3)
        found.setdefault(step, []).append(port)
    return found


@pytest.fixture
def cluster(postgres_schema, subprocess_servers, tmp_path):  # noqa: F811
    """
    A factory of servers sharing one PostgreSQL schema and one flows root,
    with the test flow installed; returns C{(make, out)}.
    """
    _server, _schema, url = postgres_schema
    out = tmp_path / "out"
    out.mkdir()

    def make(name: str, **env):
        server = subprocess_servers(name, env={
            "MAXQ_DATABASE_URL": url, "MAXQ_WORKER_ID": name, **FAST_CLUSTER, **env})
        return server

    first = make("probe")
    first.flows.add("spread", FLOW, steps={
        "mark": f'OUT="{out}"\n' + STEP})
    return make, out


def port_of(server) -> str:
    return server.url.rsplit(":", 1)[1]


async def trigger(server) -> str:
    status, run = await server.post("/flows/spread/runs", {"input": {}})
    assert status == 201, run
    return run["id"]


async def test_steps_run_exactly_once_across_two_servers(cluster, reactor):
    make, out = cluster
    a = await make("a", STEPS="30", PAUSE="0.02").start()
    b = await make("b", STEPS="30", PAUSE="0.02").start()
    runs = []
    for i in range(10):
        runs.append(await trigger(a if i % 2 else b))
    for run_id in runs:
        run = await a.wait_run(run_id, timeout=90)
        assert run["status"] == "completed", run
    ports = set()
    total = 0
    for run_id in runs:
        seen = markers(out, run_id)
        assert sorted(seen) == sorted(f"s{i}" for i in range(30))
        for step, where in seen.items():
            assert len(where) == 1, f"{run_id} {step} ran {len(where)} times"
            ports.add(where[0])
            total += 1
    assert total == 300
    assert ports == {port_of(a), port_of(b)}, "both servers ran steps"


async def test_killed_server_work_is_taken_back(cluster, reactor):
    make, out = cluster
    a = await make("a", STEPS="24", PAUSE="0.5").start()
    b = await make("b", STEPS="24", PAUSE="0.5").start()
    run_id = await trigger(b)

    async def b_running_steps():
        seen = markers(out, run_id)
        return any(port_of(b) in ports for ports in seen.values())

    await a.wait_for(b_running_steps, timeout=30, what="server b running steps")
    await b.kill()
    run = await a.wait_run(run_id, timeout=60)
    assert run["status"] == "completed", run
    steps = await a.steps(run_id)
    assert all(s["status"] == "completed" for s in steps)
    assert all(s["retryCount"] == 0 for s in steps), "taking work back spends no retry"
    seen = markers(out, run_id)
    assert sorted(seen) == sorted(f"s{i}" for i in range(24))
    assert any(port_of(a) in ports for ports in seen.values())
    # The killed server's own step processes did not outlive the takeover.
    leftovers = [int(p.name.rsplit(".", 1)[1]) for p in out.glob(f"{run_id}.*.{port_of(b)}.*")]
    assert pids_alive(leftovers) == []


async def test_abort_on_one_server_kills_the_step_on_the_other(cluster, reactor):
    make, out = cluster
    a = await make("a", STEPS="1", PAUSE="300").start()
    b = await make("b", STEPS="1", PAUSE="300").start()
    run_id = await trigger(a)

    async def started():
        return [p for p in out.glob(f"{run_id}.s0.*")]

    (marker,) = await a.wait_for(started, timeout=30, what="the step to start")
    runner_port = marker.name.rsplit(".", 2)[1]
    pid = int(marker.read_text())
    other = a if runner_port == port_of(b) else b
    assert port_of(other) != runner_port
    status, body = await other.post(f"/runs/{run_id}/abort")
    assert status == 200, body

    async def gone():
        return not pids_alive([pid])

    await a.wait_for(gone, timeout=10, what="the step's process to be killed")
    step = await a.wait_step(run_id, "s0", {"failed"})
    assert step["terminationReason"] == "aborted"


class PrivatePostgres:
    """
    A PostgreSQL instance of the test's own (initdb in a temp directory, a
    free port), so that restarting it disturbs no other test.
    """

    def __init__(self):
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found and not shutil.which("pg_ctl"):
            pytest.skip("no PostgreSQL server binaries (pg_ctl, initdb) to start one")
        bindir = found[-1].parent if found else Path(shutil.which("pg_ctl")).parent
        self.pg_ctl = str(bindir / "pg_ctl")
        self.dir = Path(tempfile.mkdtemp(prefix="maxq-pg-"))
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        self.port = free_port()
        # PostgreSQL refuses to run as root.
        self.prefix = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self._run(str(bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                  "-U", "postgres", "--no-sync")
        self._ctl("start")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command):
        subprocess.run([*self.prefix, *command], check=True, capture_output=True,
                       timeout=120, cwd=self.dir)

    def _ctl(self, action: str, *extra):
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off")
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-w",
                  "-l", str(self.dir / "log"), action, *extra)

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        try:
            self._ctl("stop", "-m", "immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres():
    pg = PrivatePostgres()
    yield pg
    pg.stop()


async def test_postgres_restart_mid_run_loses_nothing(private_postgres, subprocess_servers,  # noqa: F811
                                                      tmp_path, reactor):
    out = tmp_path / "out"
    out.mkdir()
    a = subprocess_servers("a", env={"MAXQ_DATABASE_URL": private_postgres.url,
                                     "MAXQ_WORKER_ID": "a", **FAST_CLUSTER,
                                     "STEPS": "16", "PAUSE": "0.3"})
    a.flows.add("spread", FLOW, steps={"mark": f'OUT="{out}"\n' + STEP})
    await a.start()
    run_id = await trigger(a)

    async def some_done():
        return len(markers(out, run_id)) >= 4

    await a.wait_for(some_done, timeout=30, what="a few steps to run")
    await threads.deferToThread(private_postgres.restart)
    outage = []

    async def finished():
        # While the server reconnects it answers 503: expected, not a failure.
        status, run = await a.get(f"/runs/{run_id}")
        if status == 503:
            outage.append(run["code"])
            return None
        assert status == 200, run
        return run if run["status"] in ("completed", "failed") else None

    run = await a.wait_for(finished, timeout=90, what="the run to finish")
    assert run["status"] == "completed", (run, a.log_tail())
    assert set(outage) <= {"SERVICE_UNAVAILABLE"}
    seen = markers(out, run_id)
    assert sorted(seen) == sorted(f"s{i}" for i in range(16))
    steps = await a.steps(run_id)
    assert all(s["status"] == "completed" for s in steps)
    status, health = await a.get("/health", prefix=False)
    assert (status, health["services"]["database"]) == (200, "healthy")
