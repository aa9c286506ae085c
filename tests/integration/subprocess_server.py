"""
A real MaxQ server in a process of its own (C{python -m maxq serve}), for
what an in-process server cannot show: C{kill -9}, SIGTERM, a restart on
the same database, and the server's own memory, descriptors and children.

    server = SubprocessServer(reactor, tmp_path / "flows", tmp_path / "maxq.db",
                              tmp_path / "server.log", env={...})
    await server.start()              # polls /health with treq
    run = await server.trigger("f")   # every helper of conftest.Server works
    await server.kill()               # SIGKILL, waits for the exit
    await server.start()              # same flows, same database, new port

The test's reactor is never blocked: the process is started with Popen
(which returns at once) and its exit is polled.  Call C{close()} at the end
(the C{subprocess_servers} fixture does).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import task

from .conftest import Flows, Server
from .exec_support import children_of


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_environment(flows_root: Path, db_path: Path, extra: dict | None = None
                       ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAXQ_")}
    env.update(
        MAXQ_FLOWS_ROOT=str(flows_root),
        MAXQ_SQLITE_PATH=str(db_path),
        MAXQ_SCHEDULER_INTERVAL_MS="50",
        MAXQ_ABORT_GRACE_MS="1000",
        MAXQ_SHUTDOWN_GRACE_MS="0",
        # One identity across restarts (it matters on PostgreSQL).
        MAXQ_WORKER_ID="subprocess-server",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


class SubprocessServer(Server):
    def __init__(self, reactor, flows_root: Path, db_path: Path, log_path: Path,
                 env: dict | None = None):
        flows_root.mkdir(parents=True, exist_ok=True)
        super().__init__(None, None, Flows(flows_root), reactor)
        self.db_path = db_path
        self.log_path = log_path
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, timeout: float = 20.0, **env) -> "SubprocessServer":
        assert not self.alive, "already running"
        port = free_port()
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start {self.starts} on port {port} =====\n".encode())
        log.flush()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "maxq", "serve", "--port", str(port)],
                env=server_environment(self.flows.root, self.db_path,
                                       {**self.env, **env}),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Signals meant for the test run (Ctrl-C) are not its.
                start_new_session=True,
            )
        finally:
            log.close()
        self.url = f"http://127.0.0.1:{port}"
        self.api = self.url + "/api/v1"
        deadline = self.reactor.seconds() + timeout
        while True:
            if not self.alive:
                raise AssertionError(
                    f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                resp = await treq.get(self.url + "/health", reactor=self.reactor,
                                      persistent=False, timeout=2)
                await resp.content()
                if resp.code == 200:
                    return self
            except Exception:
                pass
            if self.reactor.seconds() > deadline:
                raise AssertionError(f"server not healthy after {timeout}s:\n"
                                     f"{self.log_tail()}")
            await task.deferLater(self.reactor, 0.05, lambda: None)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        """
        Wait (without blocking the reactor) for the process to end; return
        its exit status.
        """
        deadline = self.reactor.seconds() + timeout
        while self.proc.poll() is None:
            if self.reactor.seconds() > deadline:
                raise AssertionError(f"server still running after {timeout}s:\n"
                                     f"{self.log_tail()}")
            await task.deferLater(self.reactor, 0.02, lambda: None)
        return self.proc.returncode

    async def kill(self) -> int:
        """
        C{kill -9}: the server gets no chance to clean up.
        """
        self.signal(signal.SIGKILL)
        return await self.wait_exit()

    async def terminate(self, timeout: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    @property
    def backend(self) -> str:
        return "postgres" if self.env.get("MAXQ_DATABASE_URL") else "sqlite"

    def query(self, sql: str, *params) -> list[tuple]:
        """
        Read the server's database directly (C{?} placeholders), whichever
        backend it uses.
        """
        if self.backend == "postgres":
            import psycopg2

            conn = psycopg2.connect(self.env["MAXQ_DATABASE_URL"])
            try:
                with conn.cursor() as cur:
                    cur.execute(sql.replace("?", "%s"), params)
                    return [tuple(r) for r in cur.fetchall()]
            finally:
                conn.close()
        import sqlite3

        conn = sqlite3.connect(self.db_path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def close(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait(10)

    # ---------------------------------------------------------- /proc views

    def status(self) -> dict[str, str]:
        """
        C{/proc/<pid>/status} of the server, as a dict.
        """
        result = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                result[key] = value.strip()
        return result

    def memory_kb(self, key: str = "VmRSS") -> int:
        return int(self.status()[key].split()[0])

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def children(self) -> list[tuple[int, str]]:
        """
        C{[(pid, state)]} of the server's child processes.
        """
        return children_of(self.pid)


def processes_with_env(name: str, value: str) -> list[int]:
    """
    Live processes (not zombies) started with C{name=value} in their
    environment: what is left of a run's scripts.
    """
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if state not in ("Z", "X") and needle in environ:
            found.append(int(entry))
    return found


@pytest_twisted.async_yield_fixture()
async def subprocess_servers(tmp_path, reactor):
    """
    A factory of L{SubprocessServer}s that all share C{tmp_path/flows}; each
    is killed at the end of the test if it is still running.
    """
    made: list[SubprocessServer] = []

    def make(name: str = "maxq", env: dict | None = None,
             flows_root: Path | None = None) -> SubprocessServer:
        server = SubprocessServer(reactor, flows_root or tmp_path / "flows",
                                  tmp_path / f"{name}.db", tmp_path / f"{name}.log", env)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest_twisted.async_yield_fixture(params=["sqlite", "postgres"])
async def backend_servers(request, subprocess_servers):
    """
    L{subprocess_servers}, once per backend: on PostgreSQL every server of
    the test uses the session's shared schema.
    """
    extra = {}
    if request.param == "postgres":
        _server, _schema, url = request.getfixturevalue("postgres_database")
        extra["MAXQ_DATABASE_URL"] = url

    def make(name: str = "maxq", env: dict | None = None, flows_root=None):
        return subprocess_servers(name, env={**extra, **(env or {})},
                                  flows_root=flows_root)

    yield make
