"""
A real MaxQ server on an ephemeral port, with flows written into a temp
directory, driven over real HTTP with treq.

    async def test_x(maxq):
        server = await maxq.start(max_concurrent_steps=4)
        server.flows.add("f", flow_sh, steps={"s": "exit 0"})
        status, run = await server.post("/flows/f/runs", {})
        run = await server.wait_run(run["id"])
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import task

from maxq.config import Config

SHEBANG = "#!/usr/bin/env bash\n"
TERMINAL = {"completed", "failed"}


class Flows:
    """
    Writes flows into a flows root: C{add(name, flow_sh, steps={name: body})}.
    Script bodies are dedented and given a bash shebang unless they have one.
    """

    def __init__(self, root: Path):
        self.root = root

    def write_script(self, path: Path, body: str, executable: bool = True) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = textwrap.dedent(body).lstrip("\n")
        if not body.startswith("#!"):
            body = SHEBANG + body
        path.write_text(body)
        mode = 0o755 if executable else 0o644
        path.chmod(mode)
        return path

    def add(self, name: str, flow_sh: str, steps: dict[str, str] | None = None,
            flow_yaml: str | None = None) -> Path:
        flow_dir = self.root / name
        self.write_script(flow_dir / "flow.sh", flow_sh)
        for step_name, body in (steps or {}).items():
            self.write_script(flow_dir / "steps" / step_name / "step.sh", body)
        if flow_yaml is not None:
            (flow_dir / "flow.yaml").write_text(textwrap.dedent(flow_yaml))
        return flow_dir

    def add_step(self, flow: str, step_name: str, body: str) -> Path:
        return self.write_script(self.root / flow / "steps" / step_name / "step.sh", body)


class Server:
    def __init__(self, service, config: Config, flows: Flows, reactor):
        self.service = service
        self.config = config
        self.flows = flows
        self.reactor = reactor
        self.url = ""
        self.api = ""
        self.headers: dict[str, str] = {}

    async def request(self, method: str, path: str, body=None, *, raw: bytes | None = None,
                      headers: dict[str, str] | None = None, prefix: bool = True):
        """
        Send a request; return C{(status, parsed JSON body or text)}.
        C{path} is relative to C{/api/v1} unless C{prefix=False}.
        """
        url = (self.api if prefix else self.url) + path
        hdrs = {"Content-Type": "application/json", **self.headers, **(headers or {})}
        data = raw
        if data is None and body is not None:
            data = json.dumps(body).encode()
        resp = await treq.request(method, url, data=data, headers=hdrs,
                                  reactor=self.reactor, persistent=False)
        content = await resp.content()
        ctype = resp.headers.getRawHeaders("content-type", [""])[0]
        if ctype.startswith("application/json"):
            return resp.code, json.loads(content)
        return resp.code, content.decode("utf-8", "replace")

    async def get(self, path, **kw):
        return await self.request("GET", path, **kw)

    async def post(self, path, body=None, **kw):
        return await self.request("POST", path, body, **kw)

    async def patch(self, path, body=None, **kw):
        return await self.request("PATCH", path, body, **kw)

    async def trigger(self, flow: str, body: dict | None = None) -> dict:
        status, run = await self.post(f"/flows/{flow}/runs", body or {})
        assert status == 201, (status, run)
        return run

    async def wait_for(self, predicate, timeout: float = 15.0, interval: float = 0.02,
                       what: str = "condition"):
        """
        Poll the async C{predicate} until it returns something truthy; fail
        after C{timeout} seconds.
        """
        deadline = self.reactor.seconds() + timeout
        while True:
            result = await predicate()
            if result:
                return result
            if self.reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await task.deferLater(self.reactor, interval, lambda: None)

    async def wait_run(self, run_id: str, statuses=TERMINAL, timeout: float = 15.0) -> dict:
        """
        Poll until the run's status is one of C{statuses}; return the run.
        """
        async def check():
            status, run = await self.get(f"/runs/{run_id}")
            assert status == 200, (status, run)
            return run if run["status"] in statuses else None

        return await self.wait_for(check, timeout, what=f"run {run_id} in {statuses}")

    async def wait_step(self, run_id: str, step_id: str, statuses, timeout: float = 15.0) -> dict:
        async def check():
            status, step = await self.get(f"/runs/{run_id}/steps/{step_id}")
            return step if status == 200 and step["status"] in statuses else None

        return await self.wait_for(check, timeout, what=f"step {step_id} in {statuses}")

    async def steps(self, run_id: str, **query) -> list[dict]:
        qs = "&".join(f"{k}={v}" for k, v in {"limit": 1000, **query}.items())
        status, body = await self.get(f"/runs/{run_id}/steps?{qs}")
        assert status == 200, (status, body)
        return body["steps"]


class ServerFactory:
    """
    Starts servers for one test.  On SQLite each server gets its own
    database file unless the test passes C{sqlite_path}; on PostgreSQL every
    server of a test shares the test's schema.
    """

    def __init__(self, tmp_path: Path, reactor, backend: str = "sqlite",
                 database_url: str | None = None):
        self.tmp_path = tmp_path
        self.reactor = reactor
        self.backend = backend
        self.database_url = database_url
        self.started: list[Server] = []

    async def start(self, flows_root: Path | None = None, env: dict | None = None,
                    **overrides) -> Server:
        from maxq.service import build_service

        n = len(self.started)
        root = flows_root or (self.tmp_path / f"flows{n}")
        root.mkdir(parents=True, exist_ok=True)
        settings = dict(
            flows_root=root,
            sqlite_path=self.tmp_path / f"maxq{n}.db",
            port=0,
            scheduler_interval_ms=50,
            abort_grace_ms=1000,
            # Stopping a test server terminates its processes at once; the
            # grace itself is tested in test_shutdown.py.
            shutdown_grace_ms=0,
        )
        if self.database_url:
            settings["database_url"] = self.database_url
        settings.update(overrides)
        config = Config.from_env(env or {}, **settings)
        service = build_service(config, self.reactor)
        server = Server(service, config, Flows(root), self.reactor)
        service.startService()
        self.started.append(server)
        port = await service.listening
        server.url = f"http://127.0.0.1:{port.getHost().port}"
        server.api = server.url + "/api/v1"
        if config.api_keys:
            server.headers["Authorization"] = f"Bearer {config.api_keys[0]}"
        return server

    async def stop_all(self):
        for server in reversed(self.started):
            if server.service.running:
                await server.service.stopService()
        self.started.clear()


@pytest_twisted.async_yield_fixture(params=["sqlite", "postgres"])
async def maxq(request, tmp_path, reactor):
    """
    Every integration test runs once per backend.
    """
    database_url = None
    if request.param == "postgres":
        _server, _schema, database_url = request.getfixturevalue("postgres_database")
    factory = ServerFactory(tmp_path, reactor, request.param, database_url)
    yield factory
    await factory.stop_all()


def pids_alive(pids) -> list[int]:
    """
    The subset of C{pids} that still exist (and are not zombies).
    """
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive
