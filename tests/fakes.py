"""
Test doubles: a scripted process runner that spawns nothing, and L{World}:
a whole server (engine, scheduler, API) on a L{task.Clock} and in-memory
SQLite, with the fake runner and an in-memory HTTP client, so rules can be
tested through the API without sockets, processes or sleeps.
"""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet import defer, task

from maxq.api.app import Api
from maxq.config import Config
from maxq.engine import Engine
from maxq.flows import FlowsRoot
from maxq.process import ProcessResult
from maxq.scheduler import SchedulerService
from maxq.store.sqlite import SqliteStore


class FakeHandle:
    def __init__(self, runner, script, cwd, env, timeout_s):
        self.runner = runner
        self.script = script
        self.cwd = cwd
        self.env = env
        self.timeout_s = timeout_s
        self.done = defer.Deferred()
        self.terminated: str | None = None
        self.finished = False
        runner.last_pid += 1
        self.pid = runner.last_pid

    def terminate(self, reason):
        if self.finished:
            return False
        self.terminated = self.terminated or reason
        return True

    def exit(self, code=0, stdout="", stderr="", signal=None):
        """
        Make the fake process end with C{code}.
        """
        self.finished = True
        self.runner.running.discard(self)
        now = int(self.runner.clock.seconds() * 1000)
        self.done.callback(ProcessResult(
            exit_code=code, signal=signal, stdout=stdout, stderr=stderr,
            termination_reason=self.terminated, started_ms=now, ended_ms=now))


class FakeRunner:
    def __init__(self, clock):
        self.clock = clock
        self.spawned: list[FakeHandle] = []
        self.last_pid = 40000
        self.running: set[FakeHandle] = set()

    def spawn(self, script, cwd, env, timeout_s=None):
        handle = FakeHandle(self, script, cwd, env, timeout_s)
        self.spawned.append(handle)
        self.running.add(handle)
        return handle

    def by_step(self, step_id):
        return [h for h in self.spawned if h.env.get("MAXQ_STEP_ID") == step_id]

    def flows(self):
        return [h for h in self.spawned if "MAXQ_STEP_ID" not in h.env]

    def terminate_all(self, reason):
        handles = list(self.running)
        for h in handles:
            h.terminate(reason)
            h.exit(code=None, signal=15)
        return defer.succeed(None)

    def kill_all(self, reason):
        handles = list(self.running)
        for h in handles:
            h.terminate(reason)
            h.exit(code=None, signal=9)
        return len(handles)

    def close(self):
        pass


def resolved(awaitable):
    """
    The result of an awaitable that must already be complete (the SQLite
    store and a fake clock make engine calls synchronous); raises its error.
    """
    d = defer.ensureDeferred(awaitable) if not isinstance(awaitable, defer.Deferred) \
        else awaitable
    results = []
    d.addBoth(results.append)
    assert results, "expected an already-fired result"
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def step(id, deps=(), **extra):
    """
    A stage request's step of script C{x} (the one L{World} provides).
    """
    return {"id": id, "name": "x", "maxRetries": 0, "dependsOn": list(deps), **extra}


class World:
    def __init__(self, tmp_path, **overrides):
        for path in ("f/flow.sh", "f/steps/x/step.sh"):
            script = tmp_path / path
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text("#!/bin/sh\n")
            script.chmod(0o755)
        settings = dict(flows_root=tmp_path, sqlite_path=":memory:",
                        scheduler_interval_ms=200, max_concurrent_steps=10,
                        shutdown_grace_ms=0)
        settings.update(overrides)
        self.config = Config.from_env({}, **settings)
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.store = SqliteStore(":memory:", self.clock)
        resolved(self.store.start())
        self.engine = Engine(self.store, FlowsRoot(tmp_path), self.config, self.clock)
        self.runner = FakeRunner(self.clock)
        self.scheduler = SchedulerService(self.engine, self.runner, self.engine.flows,
                                          self.config, self.clock, base_env={"PATH": "/bin"})
        self.scheduler.startService()
        self.api = Api(self.engine, self.store, self.clock, self.scheduler)
        self.http = StubTreq(self.api.app.resource())

    def request(self, method: str, path: str, body=None, headers=None):
        """
        C{(status, decoded JSON body)} of a request to the in-memory API.
        """
        data = None if body is None else json.dumps(body).encode()
        d = self.http.request(method, "http://maxq" + path, data=data,
                              headers=headers or {"Content-Type": "application/json"})
        self.http.flush()
        response = resolved(d)
        content = self.http.content(response)
        self.http.flush()
        raw = resolved(content)
        return response.code, (json.loads(raw) if raw else None)

    def settle(self):
        self.clock.advance(0)

    def run_status(self, run_id):
        return resolved(self.engine.get_run(run_id))["status"]

    def step(self, run_id, step_id):
        return resolved(self.engine.get_step(run_id, step_id))

    def trigger(self):
        run, _ = resolved(self.engine.create_run("f", {}, None))
        self.settle()
        return run["id"]

    def schedule(self, run_id, steps, stage="s", final=True, **extra):
        body = {"stage": stage, "final": final, "steps": steps, **extra}
        return resolved(self.engine.schedule_stage(run_id, body))

    def stop(self):
        stopping = self.scheduler.stopService()
        # The exits of the processes it stops commit on the next turn
        # (maxq.engine.unit.TurnBatch).
        self.clock.advance(0)
        resolved(stopping)
        resolved(self.store.stop())
