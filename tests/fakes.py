"""
Test doubles: a scripted process runner that spawns nothing.
"""

from __future__ import annotations

from twisted.internet import defer

from maxq.process import ProcessResult


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
