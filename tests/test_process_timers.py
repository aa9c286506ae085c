"""
L{maxq.process.ProcessHandle}'s timers on a L{task.Clock}: the timeout,
the SIGTERM -> SIGKILL grace, the bounded drain of pipes a script's
children hold open, and that a finished process leaves no timer behind.
The process is a fake transport and signals are recorded, not sent; the
same paths with real processes are in tests/integration/test_script_runner.py.
"""

from __future__ import annotations

import signal

import pytest
from twisted.internet import task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from maxq import process


class FakeTransport:
    pid = 4242

    def __init__(self):
        self.lost = False

    def loseConnection(self):
        self.lost = True


class ClockReactor(task.Clock):
    """
    A clock that also "spawns": it keeps the protocol so the test can feed
    it output and exits.
    """

    def __init__(self):
        super().__init__()
        self.protocols = []

    def spawnProcess(self, protocol, executable, args, env, childFDs):
        self.protocols.append(protocol)
        return FakeTransport()


@pytest.fixture
def signals(monkeypatch):
    sent = []
    monkeypatch.setattr(process.os, "killpg", lambda pgid, sig: sent.append((pgid, sig)))
    return sent


@pytest.fixture
def runner(tmp_path):
    clock = ClockReactor()
    r = process.ScriptRunner(clock, capture_bytes=8, grace_ms=5000, drain_ms=2000)
    yield r
    r.close()


def _spawn(runner, tmp_path, timeout_s=None):
    handle = runner.spawn("/bin/true", str(tmp_path), {}, timeout_s=timeout_s)
    return handle, runner.reactor.protocols[-1]


def _results(handle):
    got = []
    handle.done.addCallback(got.append)
    return got


def test_a_timeout_terminates_then_kills_after_the_grace(runner, tmp_path, signals):
    handle, proto = _spawn(runner, tmp_path, timeout_s=3)
    got = _results(handle)
    clock = runner.reactor
    clock.advance(2.9)
    assert signals == []
    clock.advance(0.1)
    assert signals == [(4242, signal.SIGTERM)]
    clock.advance(4.9)
    assert signals == [(4242, signal.SIGTERM)]
    clock.advance(0.1)
    assert signals == [(4242, signal.SIGTERM), (4242, signal.SIGKILL)]
    proto.processExited(Failure(ProcessTerminated(signal=9)))
    proto.processEnded(Failure(ProcessTerminated(signal=9)))
    [result] = got
    assert result.termination_reason == "timeout"
    assert result.signal == 9 and not result.succeeded
    assert result.duration_ms == 8000
    assert clock.getDelayedCalls() == []
    assert runner.running == set()


def test_a_script_that_exits_in_the_grace_is_not_killed(runner, tmp_path, signals):
    handle, proto = _spawn(runner, tmp_path)
    got = _results(handle)
    assert handle.terminate("aborted") is True
    runner.reactor.advance(1)
    proto.processExited(Failure(ProcessDone(0)))
    proto.processEnded(Failure(ProcessDone(0)))
    # The group is told once more on the way out (nothing may outlive the
    # script), but never SIGKILLed, and no timer is left.
    assert signal.SIGKILL not in [sig for _, sig in signals]
    assert runner.reactor.getDelayedCalls() == []
    # Terminated: the attempt fails even though the script exited 0.
    [result] = got
    assert result.exit_code == 0 and result.termination_reason == "aborted"
    assert not result.succeeded
    assert handle.terminate("again") is False


def test_pipes_held_open_by_children_are_drained_for_a_bounded_time(runner, tmp_path,
                                                                    signals):
    handle, proto = _spawn(runner, tmp_path)
    got = _results(handle)
    proto.childDataReceived(1, b"0123456789abcdef")
    proto.processExited(Failure(ProcessDone(0)))
    runner.reactor.advance(1.9)
    assert got == [] and signals == []
    runner.reactor.advance(0.1)
    assert signals == [(4242, signal.SIGKILL)]
    assert handle.transport.lost
    [result] = got
    # Exited 0 on its own: a success, with the last capture_bytes kept.
    assert result.succeeded and result.stdout == "89abcdef"
    # The pipes closing later changes nothing.
    proto.processEnded(Failure(ProcessDone(0)))
    assert len(got) == 1 and runner.reactor.getDelayedCalls() == []


def test_kill_now_skips_the_grace(runner, tmp_path, signals):
    handle, proto = _spawn(runner, tmp_path, timeout_s=60)
    got = _results(handle)
    assert runner.kill_all("shutdown") == 1
    assert signals == [(4242, signal.SIGKILL)]
    proto.processExited(Failure(ProcessTerminated(signal=9)))
    proto.processEnded(Failure(ProcessTerminated(signal=9)))
    assert got[0].termination_reason == "shutdown"
    # The timeout timer went with the process.
    assert runner.reactor.getDelayedCalls() == []
    assert runner.kill_all("shutdown") == 0
