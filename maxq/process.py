"""
Running one script as a process: its own process group, stdin from
C{/dev/null}, the tail of stdout and stderr kept, the exit status reported,
and termination of the whole group (SIGTERM, then SIGKILL after a grace).

No database and no HTTP here: a L{ScriptRunner} is handed a script, a
directory and an environment, and gives back a L{ProcessHandle} whose
C{done} Deferred fires with a L{ProcessResult}.
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger


@dataclass
class ProcessResult:
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    # Why the server stopped it ('aborted', 'timeout', 'paused', ...), if it did.
    termination_reason: str | None
    started_ms: int
    ended_ms: int

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.termination_reason is None

    @property
    def duration_ms(self) -> int:
        return self.ended_ms - self.started_ms


class _Tail:
    """
    Keeps the last C{limit} bytes written, trimming in amortised O(1).
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > 2 * self.limit:
            del self.buf[: len(self.buf) - self.limit]

    def text(self) -> str:
        return bytes(self.buf[-self.limit:]).decode("utf-8", errors="replace")


class _ScriptProtocol(ProcessProtocol):
    """
    Only buffers and forwards; the handle decides.
    """

    def __init__(self, handle: "ProcessHandle"):
        self.handle = handle

    def childDataReceived(self, childFD, data):
        self.handle._output(childFD, data)

    def processExited(self, reason):
        self.handle._exited(reason.value)

    def processEnded(self, reason):
        self.handle._ended()


class ProcessHandle:
    log = Logger()

    def __init__(self, runner: "ScriptRunner", timeout_s: float | None):
        self.runner = runner
        self.reactor = runner.reactor
        self.done: defer.Deferred = defer.Deferred()
        self.pid: int | None = None
        self.transport = None
        self._stdout = _Tail(runner.capture_bytes)
        self._stderr = _Tail(runner.capture_bytes)
        self._started_ms = runner.now_ms()
        self._exit_code: int | None = None
        self._signal: int | None = None
        self._exited_yet = False
        self._finished = False
        self._termination_reason: str | None = None
        self._timers: list = []
        # Where output goes as it arrives, besides the tail:
        # C{sink(fd, data)}, and C{sink(None, None)} once at the end.
        self.sink = None
        if timeout_s is not None:
            self._timers.append(
                self.reactor.callLater(timeout_s, self.terminate, "timeout")
            )

    @property
    def finished(self) -> bool:
        return self._finished

    def _output(self, fd: int, data: bytes) -> None:
        (self._stdout if fd == 1 else self._stderr).write(data)
        if self.sink is not None:
            self.sink(fd, data)

    def _exited(self, value) -> None:
        self._exited_yet = True
        self._exit_code = getattr(value, "exitCode", None)
        self._signal = getattr(value, "signal", None)
        if self._finished:
            return
        # The script is gone, but something it started may still hold its
        # pipes open; give the output a bounded time to drain.
        self._timers.append(
            self.reactor.callLater(self.runner.drain_s, self._drain_expired)
        )

    def _ended(self) -> None:
        if self._finished:
            return
        # Pipes closed.  Nothing of the script may outlive it.
        self._signal_group(signal.SIGTERM)
        self._finish()

    def _drain_expired(self) -> None:
        if self._finished:
            return
        self._signal_group(signal.SIGKILL)
        if self.transport is not None:
            self.transport.loseConnection()
        self._finish()

    def _signal_group(self, sig: int) -> bool:
        if self.pid is None:
            return False
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def terminate(self, reason: str) -> bool:
        """
        Stop the process group: SIGTERM now, SIGKILL after the grace period.
        The attempt counts as failed even if the script then exits 0.
        Returns False when the process had already finished.
        """
        if self._finished:
            return False
        if self._termination_reason is None:
            self._termination_reason = reason
        self._signal_group(signal.SIGTERM)
        self._timers.append(
            self.reactor.callLater(self.runner.grace_s, self._kill)
        )
        return True

    def _kill(self) -> None:
        if not self._finished:
            self._signal_group(signal.SIGKILL)

    def kill_now(self, reason: str) -> bool:
        """
        SIGKILL the group at once, with no grace (a server told to stop
        twice).  Returns False when the process had already finished.
        """
        if self._finished:
            return False
        if self._termination_reason is None:
            self._termination_reason = reason
        self._signal_group(signal.SIGKILL)
        return True

    def _finish(self) -> None:
        self._finished = True
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self.runner._forget(self)
        if self.sink is not None:
            self.sink(None, None)
        result = ProcessResult(
            exit_code=self._exit_code,
            signal=self._signal,
            stdout=self._stdout.text(),
            stderr=self._stderr.text(),
            termination_reason=self._termination_reason,
            started_ms=self._started_ms,
            ended_ms=self.runner.now_ms(),
        )
        self.done.callback(result)


class ScriptRunner:
    """
    Spawns scripts.  Each is launched as C{setsid SCRIPT} with the server's
    working directory changed to the script's directory just around the
    spawn:

      - setsid gives the script its own process group (pgid == pid; it
        does not fork, as the child is not a group leader);
      - Twisted only takes its fast C{posix_spawnp} path when it is given
        no C{path=} (it forks instead, at a cost that grows with the
        parent's heap), and a spawned child inherits the parent's directory.

    Changing the directory inside the launch instead (C{setsid env -C DIR})
    costs the child a second exec, about 1 ms of CPU per step, as much as
    bash itself.  The change is safe because the reactor thread does
    nothing else until it is undone, and every path the server's other
    threads use is absolute (the SQLite store makes its path absolute).
    """

    log = Logger()

    def __init__(self, reactor, capture_bytes: int = 65536, grace_ms: int = 5000,
                 drain_ms: int = 2000):
        self.reactor = reactor
        self.capture_bytes = capture_bytes
        self.grace_s = grace_ms / 1000.0
        self.drain_s = drain_ms / 1000.0
        self.running: set[ProcessHandle] = set()
        self._setsid = shutil.which("setsid") or "/usr/bin/setsid"
        self._devnull = os.open(os.devnull, os.O_RDONLY)
        # Where to come back to after each spawn, even if it is renamed.
        self._home = os.open(".", os.O_RDONLY | os.O_DIRECTORY)

    def now_ms(self) -> int:
        return int(self.reactor.seconds() * 1000)

    def spawn(self, script, cwd, env: dict[str, str],
              timeout_s: float | None = None) -> ProcessHandle:
        """
        Start C{script} (an absolute path) in C{cwd} with exactly C{env}.
        Raises L{OSError} when it cannot be started.
        """
        handle = ProcessHandle(self, timeout_s)
        protocol = _ScriptProtocol(handle)
        try:
            os.chdir(cwd)
            try:
                transport = self.reactor.spawnProcess(
                    protocol,
                    self._setsid,
                    ["setsid", str(script)],
                    env=env,
                    childFDs={0: self._devnull, 1: "r", 2: "r"},
                )
            finally:
                os.fchdir(self._home)
        except BaseException:
            for timer in handle._timers:
                timer.cancel()
            raise
        handle.transport = transport
        handle.pid = transport.pid
        self.running.add(handle)
        return handle

    def _forget(self, handle: ProcessHandle) -> None:
        self.running.discard(handle)

    def terminate_all(self, reason: str) -> defer.Deferred:
        """
        Terminate every running process; fires when all have finished.
        """
        handles = list(self.running)
        for handle in handles:
            handle.terminate(reason)
        return defer.DeferredList([h.done for h in handles], consumeErrors=True)

    def kill_all(self, reason: str) -> int:
        """
        SIGKILL every running process group at once; returns how many.
        """
        return sum(1 for handle in list(self.running) if handle.kill_now(reason))

    def close(self) -> None:
        for name in ("_devnull", "_home"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
