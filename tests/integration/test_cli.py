"""
The C{maxq} command against a real server: the client commands talk to the
in-process server of the C{maxq} fixture, run as real subprocesses; C{maxq
serve} and C{maxq migrate} run as their own processes.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import treq
from twisted.web._newclient import ResponseNeverReceived
from twisted.internet import defer, error, protocol, task

from tests.cli_support import ROOT, cli_env, run_cli

# Flows talk to the API with plain curl, so these tests do not lean on the
# helper library.
API_SH = """\
api() {
  curl -sS --fail-with-body -H 'Content-Type: application/json' \\
    ${MAXQ_TOKEN:+-H "Authorization: Bearer $MAXQ_TOKEN"} "$@"
}
"""

STAGED_FLOW = API_SH + """\
if [ -z "$MAXQ_COMPLETED_STAGE" ]; then
  api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/logs" \\
    -d '{"entityType": "flow", "entityId": "staged", "level": "info",
         "message": "scheduling work"}'
  api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" \\
    -d '{"stage": "work", "final": true, "steps": [
          {"id": "first", "name": "ok", "maxRetries": 0},
          {"id": "second", "name": "ok", "maxRetries": 0, "dependsOn": ["first"]}]}'
fi
"""


def held_flow(go_file: Path) -> str:
    """
    A flow whose one step waits until C{go_file} exists: the run stays
    running until then.
    """
    return API_SH + """\
if [ -z "$MAXQ_COMPLETED_STAGE" ]; then
  api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" \\
    -d '{"stage": "hold", "final": true, "steps": [
          {"id": "wait", "name": "wait", "maxRetries": 0}]}'
fi
"""


def wait_step(go_file: Path) -> str:
    return f"while [ ! -e '{go_file}' ]; do sleep 0.05; done\n"


async def start(maxq, tmp_path, **overrides):
    server = await maxq.start(**overrides)
    server.flows.add("hello", "exit 0\n")
    server.flows.add("broken", "echo broken >&2\nexit 3\n")
    server.flows.add("staged", STAGED_FLOW, steps={"ok": "exit 0\n"})
    go = tmp_path / "go"
    server.flows.add("held", held_flow(go), steps={"wait": wait_step(go)})
    server.go_file = go
    return server


async def cli(server, *args, api_key=None):
    return await run_cli(server.reactor, *args, url=server.url, api_key=api_key)


async def test_cli_flows(maxq, tmp_path):
    server = await start(maxq, tmp_path)
    result = await cli(server, "flows")
    assert result.code == 0, result
    names = [line.split()[0] for line in result.out.splitlines()[1:]]
    assert names == sorted(["broken", "held", "hello", "staged"])

    result = await cli(server, "--json", "flows")
    assert result.code == 0, result
    flows = {f["name"]: f for f in json.loads(result.out)["flows"]}
    assert flows["staged"]["steps"] == ["ok"]


async def test_cli_run_wait_completed(maxq, tmp_path):
    server = await start(maxq, tmp_path)
    result = await cli(server, "run", "staged", "--input", '{"n": 1}', "--wait",
                       "--timeout", "30")
    assert result.code == 0, result
    run_id, status = result.out.split()
    assert status == "completed"

    status, run = await server.get(f"/runs/{run_id}")
    assert run["status"] == "completed"
    assert run["input"] == {"n": 1}

    result = await cli(server, "show", run_id)
    assert result.code == 0, result
    assert run_id in result.out
    step_lines = [line.split() for line in result.out.splitlines()
                  if line.split()[:1] in (["first"], ["second"])]
    assert [(s[0], s[3]) for s in step_lines] == [
        ("first", "completed"), ("second", "completed")]

    result = await cli(server, "show", run_id, "--json")
    assert result.code == 0, result
    shown = json.loads(result.out)
    assert shown["id"] == run_id
    assert [s["name"] for s in shown["stages"]] == ["work"]

    result = await cli(server, "runs", "--flow", "staged")
    assert result.code == 0, result
    assert run_id in result.out

    result = await cli(server, "logs", run_id)
    assert result.code == 0, result
    assert "scheduling work" in result.out


async def test_cli_run_without_wait_prints_id(maxq, tmp_path):
    server = await start(maxq, tmp_path)
    result = await cli(server, "run", "hello")
    assert result.code == 0, result
    run_id = result.out.strip()
    run = await server.wait_run(run_id)
    assert run["status"] == "completed"


async def test_cli_run_wait_failed(maxq, tmp_path):
    server = await start(maxq, tmp_path)
    result = await cli(server, "run", "broken", "--wait", "--timeout", "30")
    assert result.code == 1, result
    assert result.out.split()[1] == "failed"
    assert "flow_failed" in result.err


async def test_cli_runs_filter_by_status(maxq, tmp_path):
    server = await start(maxq, tmp_path)
    ok = (await cli(server, "run", "hello", "--wait")).out.split()[0]
    bad = (await cli(server, "run", "broken", "--wait")).out.split()[0]
    result = await cli(server, "runs", "--status", "failed")
    assert result.code == 0, result
    assert bad in result.out and ok not in result.out
    result = await cli(server, "--json", "runs", "--limit", "1")
    assert result.code == 0, result
    body = json.loads(result.out)
    assert len(body["runs"]) == 1
    assert body["pagination"]["total"] == 2


async def test_cli_api_errors(maxq, tmp_path):
    server = await start(maxq, tmp_path)
    result = await cli(server, "run", "no-such-flow")
    assert result.code == 2, result
    assert result.err.strip().endswith("(FLOW_NOT_FOUND)")
    assert result.err.startswith("error: ")

    run_id = (await cli(server, "run", "hello", "--wait")).out.split()[0]
    result = await cli(server, "retry", run_id)
    assert result.code == 2, result
    assert "(RUN_COMPLETED)" in result.err

    result = await cli(server, "show", "00000000-0000-4000-8000-000000000000")
    assert result.code == 2, result
    assert "(RUN_NOT_FOUND)" in result.err


async def test_cli_pause_resume_abort(maxq, tmp_path):
    server = await start(maxq, tmp_path, abort_grace_ms=200)
    run_id = (await cli(server, "run", "held")).out.strip()
    await server.wait_step(run_id, "wait", {"running"})

    result = await cli(server, "pause", run_id)
    assert result.code == 0, result
    await server.wait_run(run_id, {"paused"})

    result = await cli(server, "resume", run_id)
    assert result.code == 0, result
    await server.wait_step(run_id, "wait", {"running"})

    result = await cli(server, "abort", run_id)
    assert result.code == 0, result
    run = await server.wait_run(run_id)
    assert run["status"] == "failed"
    assert run["terminationReason"] == "aborted"

    # Abort is idempotent.
    result = await cli(server, "abort", run_id)
    assert result.code == 0, result

    result = await cli(server, "retry", run_id)
    assert result.code == 0, result
    server.go_file.touch()
    run = await server.wait_run(run_id)
    assert run["status"] == "completed"


async def test_cli_api_key(maxq, tmp_path):
    server = await start(maxq, tmp_path, env={"MAXQ_API_KEY": "key-one,key-two"})
    result = await cli(server, "flows")
    assert result.code == 2, result
    assert result.err.startswith("error: ")

    result = await cli(server, "flows", api_key="key-two,key-one")
    assert result.code == 0, result
    result = await cli(server, "run", "hello", "--wait", api_key="key-one")
    assert result.code == 0, result


# ----------------------------------------------------- serve and migrate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collect(protocol.ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value)


async def wait_healthy(reactor, url, process, timeout=20.0):
    deadline = reactor.seconds() + timeout
    while True:
        try:
            # Under socket activation the kernel accepts the connection
            # before the server has started, so a probe can time out while
            # it boots: that is "not yet", like a refused connection.
            response = await treq.get(url + "/health", reactor=reactor,
                                      persistent=False, timeout=2)
            if response.code == 200:
                return await response.json()
        except (error.ConnectError, defer.CancelledError, ResponseNeverReceived):
            pass
        if process.ended.called:
            raise AssertionError("server exited early:\n" + process.out.decode())
        if reactor.seconds() > deadline:
            raise AssertionError("server not healthy:\n" + process.out.decode())
        await task.deferLater(reactor, 0.1, lambda: None)


async def serve_and_stop(reactor, tmp_path, argv, url, wrapper=()):
    """
    Run C{maxq serve ARGV} in tmp_path, check it serves, SIGTERM it; return
    the process's end (twistd, once shut down, re-raises the signal that
    stopped it, so a clean stop ends with SIGTERM) and its output.
    """
    flows = tmp_path / "flows" / "hello"
    flows.mkdir(parents=True)
    (flows / "flow.sh").write_text("#!/bin/sh\nexit 0\n")
    (flows / "flow.sh").chmod(0o755)
    env = cli_env(url, MAXQ_FLOWS_ROOT=str(tmp_path / "flows"),
                  MAXQ_SQLITE_PATH=str(tmp_path / "serve.db"))
    process = Collect()
    if wrapper:
        # systemd-socket-activate passes on only the variables named with -E.
        wrapper = [*wrapper, *(f"-E{name}" for name in sorted(env))]
    command = [*wrapper, sys.executable, "-m", "maxq.cli", "serve", *argv]
    transport = reactor.spawnProcess(process, command[0], command, env=env,
                                     path=str(tmp_path))
    try:
        health = await wait_healthy(reactor, url, process)
        assert health["status"] == "healthy"
        result = await run_cli(reactor, "run", "hello", "--wait", "--timeout", "20",
                               url=url)
        assert result.code == 0, result
    finally:
        if not process.ended.called:
            transport.signalProcess("TERM")
    reason = await process.ended.addTimeout(30, reactor)
    return reason, process.out.decode("utf-8", "replace")


def stopped_cleanly(reason, out) -> bool:
    return ((reason.exitCode == 0 or reason.signal == signal.SIGTERM)
            and "Server Shut Down." in out)


async def test_serve_foreground(reactor, tmp_path):
    port = free_port()
    reason, out = await serve_and_stop(reactor, tmp_path, ["--port", str(port)],
                                       f"http://127.0.0.1:{port}")
    assert stopped_cleanly(reason, out), out
    assert "MaxQ listening on" in out  # logs go to stdout
    assert not (tmp_path / "twistd.pid").exists()


async def test_serve_listen_endpoint(reactor, tmp_path):
    port = free_port()
    reason, out = await serve_and_stop(
        reactor, tmp_path, ["--listen", f"tcp:{port}:interface=127.0.0.1"],
        f"http://127.0.0.1:{port}")
    assert stopped_cleanly(reason, out), out


SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="needs systemd-socket-activate")
async def test_serve_systemd_socket_activation(reactor, tmp_path):
    """
    Under socket activation (docs/FACTS.md §6) the server takes the socket
    systemd hands it, via C{--listen systemd:...}.
    """
    port = free_port()
    reason, out = await serve_and_stop(
        reactor, tmp_path, ["--listen", "systemd:domain=INET:index=0"],
        f"http://127.0.0.1:{port}",
        wrapper=(SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=http"))
    assert stopped_cleanly(reason, out), out


async def test_serve_port_taken_exits(reactor, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = cli_env(None, MAXQ_FLOWS_ROOT=str(tmp_path),
                      MAXQ_SQLITE_PATH=str(tmp_path / "x.db"))
        process = Collect()
        reactor.spawnProcess(
            process, sys.executable,
            [sys.executable, "-m", "maxq.cli", "serve", "--port", str(port)],
            env=env, path=str(tmp_path))
        reason = await process.ended.addTimeout(30, reactor)
    assert reason.exitCode == 1, process.out.decode()
    assert "already in use" in process.out.decode()


def test_migrate(tmp_path):
    """
    C{maxq migrate} creates the schema, says which version, and is a no-op the
    second time.  (Synchronous: no server is involved.)
    """
    env = cli_env(None, MAXQ_SQLITE_PATH=str(tmp_path / "m.db"))
    outputs = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "maxq.cli", "migrate"], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout.strip())
    assert outputs[0] == outputs[1]
    words = outputs[0].split()
    assert words[:2] == ["schema", "version"]
    assert int(words[2]) >= 1
    assert (tmp_path / "m.db").exists()


def test_migrate_bad_database_url(tmp_path):
    env = cli_env(None)
    result = subprocess.run(
        [sys.executable, "-m", "maxq.cli", "migrate", "--database-url", "mysql://x"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "MAXQ_DATABASE_URL" in result.stderr
