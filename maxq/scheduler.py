"""
The scheduler: claims runnable work through the engine and runs it.

A C{LoopingCall} at C{MAXQ_SCHEDULER_INTERVAL_MS} is only the safety net.
Every event that can make work runnable (a run triggered, a stage
scheduled, a step finished, a retry coming due, a resume) calls L{wake},
which runs a pass on the next reactor turn, so a dependent step starts
within milliseconds of its dependency finishing.  Passes never overlap: a
wake during a pass makes the pass run once more.
"""

from __future__ import annotations

import os
import weakref
from typing import Callable

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from maxq.drain import SHUTDOWN, Drain
from maxq.engine import Engine
from maxq.errors import StoreUnavailable
from maxq.flows import FlowsRoot
from maxq.launch import FlowCallLaunch, Launch, StepLaunch, not_started
from maxq.process import ProcessResult, ScriptRunner
from maxq.tokens import Credentials

# Process groups are recorded this long after a start, in one transaction
# for every process started meanwhile and still running: most steps end
# before, and cost no write at all.  A crash before the record leaves the
# group to be found by its environment (maxq.leftovers).  At 50 ms the
# record met the end of 50 ms steps on PostgreSQL and doubled the handoff
# hop between two servers (12.8 -> 27 ms in benchmarks/run.py).
GROUPS_DELAY_S = 0.5


def inherited_environment(environ=None) -> dict[str, str]:
    """
    The server's environment as scripts inherit it, less the server's own
    C{MAXQ_*} settings (an API key must not leak into every script).
    """
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not k.startswith("MAXQ_")}


class SchedulerService(Service):
    """
    C{api_url} gives the C{MAXQ_API} of the scripts, asked once at each
    start (L{maxq.service.MaxqService} knows it once it listens); by
    default, derived from C{config.port}.
    """

    log = Logger()
    name = "scheduler"

    def __init__(self, engine: Engine, runner: ScriptRunner, flows: FlowsRoot, config,
                 clock, base_env: dict[str, str] | None = None,
                 credentials: Credentials | None = None,
                 api_url: Callable[[], str] | None = None, output=None):
        self.credentials = credentials or Credentials(())
        self.engine = engine
        self.runner = runner
        self.flows = flows
        self.config = config
        self.clock = clock
        self.base_env = inherited_environment() if base_env is None else base_env
        self._api_url = api_url or (lambda: config.api_base(config.port))
        self._api: str | None = None
        # (run_id, step_id) -> (claim_no, handle); run_id -> (call_id, handle)
        self.steps: dict[tuple[str, str], tuple[int, object]] = {}
        self.flow_calls: dict[str, tuple[int, object]] = {}
        # Stores each process's output as it arrives (an OutputRecorder), if given.
        self.output = output
        self._loop = task.LoopingCall(self._pass)
        self._loop.clock = clock
        self._wake_call = None
        self._groups_call = None
        # Handles whose process group is recorded (weakly held: a finished
        # handle drops out with its entry in steps / flow_calls).
        self._recorded: weakref.WeakSet = weakref.WeakSet()
        self._timers: set = set()
        self._in_pass = False
        self._again = False
        self._stopping = False
        self._current_pass: defer.Deferred | None = None
        # When the last pass ended well, and when the service started
        # (clock seconds): what /health judges a stalled scheduler by.
        self.last_pass_at: float | None = None
        self.started_at: float | None = None
        self.drain = Drain(runner, clock, self.log)

    # ---------------------------------------------------------------- service

    def startService(self):
        super().startService()
        self._stopping = False
        self.drain.reset()
        self._api = self._api_url()
        self.engine.control = self
        self.started_at = self.clock.seconds()
        self._loop.start(self.config.scheduler_interval_ms / 1000.0, now=True)

    def _halt(self) -> None:
        """
        Start nothing more: no more passes, timers or process-group records.
        """
        self._stopping = True
        if self._loop.running:
            self._loop.stop()
        for call in [self._wake_call, self._groups_call, *self._timers]:
            if call is not None and call.active():
                call.cancel()
        self._wake_call = None
        self._timers.clear()

    async def _stop(self):
        self._halt()
        self.drain.begin()
        # A pass under way finishes: what it claimed is started (and then
        # given the grace like everything else).
        if self._current_pass is not None and not self._current_pass.called:
            await self._current_pass
        handles = [h for _, h in [*self.steps.values(), *self.flow_calls.values()]]
        await self.drain.finish(handles, self.config.shutdown_grace_ms / 1000.0)

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())

    def hurry(self) -> None:
        """
        Stop now (a second SIGTERM during the stop): no more grace, SIGKILL
        every process group, and stop retrying the database.  The database
        stays consistent: interrupted work is requeued if the database
        answers, else recovered on the next start.
        """
        self.drain.hurry()

    def kill(self) -> None:
        """
        Stop dead, as a crash would (for tests): nothing more is claimed,
        nothing is terminated or requeued, and the service stays "running".
        Processes still running are left alone; the server is meant to be
        thrown away with them.
        """
        self._halt()

    # ------------------------------------------------------- ProcessControl

    def wake(self) -> None:
        if self._stopping or not self.running:
            return
        if self._in_pass:
            self._again = True
            return
        if self._wake_call is None or not self._wake_call.active():
            self._wake_call = self.clock.callLater(0, self._pass)

    def wake_at(self, when_ms: int) -> None:
        if self._stopping or not self.running:
            return
        delay = max(0.0, when_ms / 1000.0 - self.clock.seconds())
        call = self.clock.callLater(delay, self._timer_fired)
        self._timers.add(call)

    def _timer_fired(self) -> None:
        self._timers = {t for t in self._timers if t.active()}
        self.wake()

    def terminate_steps(self, steps, reason: str) -> int:
        killed = 0
        for run_id, step_id, claim_no in steps:
            entry = self.steps.get((run_id, step_id))
            if entry is not None and entry[0] == claim_no and entry[1].terminate(reason):
                killed += 1
        return killed

    def terminate_flow(self, run_id: str, reason: str) -> int:
        entry = self.flow_calls.get(run_id)
        if entry is not None and entry[1].terminate(reason):
            return 1
        return 0

    # ----------------------------------------------------------------- passes

    def _pass(self):
        if self._in_pass or self._stopping:
            self._again = True
            return None
        self._current_pass = defer.ensureDeferred(self._guarded_pass())
        return self._current_pass

    async def _guarded_pass(self):
        self._in_pass = True
        try:
            while True:
                self._again = False
                more = await self._claim_and_start()
                if not (more or self._again) or self._stopping:
                    break
            self.last_pass_at = self.clock.seconds()
        except StoreUnavailable as e:
            # Busy or full: nothing was claimed; the next tick tries again.
            self.log.warn("scheduler pass skipped: {error}", error=str(e))
        except Exception:
            # A failing pass must not stop the loop: log it and let the next
            # tick try again.
            self.log.failure("scheduler pass failed")
        finally:
            self._in_pass = False

    async def _claim_and_start(self) -> bool:
        """
        One round of claims, in one transaction; True when a full batch was
        claimed and more may be waiting.
        """
        batch = self.config.scheduler_batch_size
        free = self.config.max_concurrent_steps - len(self.steps)
        step_limit = min(batch, free) if free > 0 else 0
        calls, steps = await self.engine.claim(self.config.worker_id, batch, step_limit,
                                               0 < free <= batch)
        for call in calls:
            self._launch(FlowCallLaunch(call, self.flow_calls))
        for step in steps:
            self._launch(StepLaunch(step, self.steps))
        if (calls or steps) and (self._groups_call is None or not self._groups_call.active()):
            self._groups_call = self.clock.callLater(GROUPS_DELAY_S, self._record_groups)
        return len(calls) == batch or (step_limit > 0 and len(steps) == step_limit)

    def _record_groups(self) -> None:
        """
        Record the process group of what runs and is not recorded yet, in one
        transaction, so that a restart after a crash can find it.
        """
        def unrecorded(handle) -> int | None:
            pid = getattr(handle, "pid", None)
            if pid and not handle.finished and handle not in self._recorded:
                self._recorded.add(handle)
                return pid
            return None

        step_groups, call_groups = [], []
        for (run_id, step_id), (claim_no, handle) in self.steps.items():
            if pid := unrecorded(handle):
                step_groups.append((run_id, step_id, claim_no, pid))
        for call_id, handle in self.flow_calls.values():
            if pid := unrecorded(handle):
                call_groups.append((call_id, pid))
        if step_groups or call_groups:
            d = defer.ensureDeferred(self.engine.record_pgids(step_groups, call_groups))
            d.addErrback(self._groups_not_recorded)
            self.drain.track(d, "recording process groups")

    def _groups_not_recorded(self, failure) -> None:
        failure.trap(StoreUnavailable)
        # Not retried: a restart after a crash also finds unrecorded groups,
        # by the environment of their processes (maxq.leftovers).
        self.log.warn("process groups not recorded: {error}", error=str(failure.value))

    # -------------------------------------------------------------- launches

    def _launch(self, launch: Launch) -> None:
        script = launch.script(self.flows)
        if script is None:
            self._record(launch, launch.not_started(self.engine.now()))
            return
        try:
            handle = self.runner.spawn(
                script, script.parent, launch.env(self.base_env, self._api, self.credentials),
                launch.timeout_s)
        except OSError as e:
            self._record(launch, not_started(self.engine.now(), f"cannot start: {e}\n"))
            return
        if self.output is not None:
            self.output.attach(launch.kind, launch.row, handle)
        launch.hold(handle)
        handle.done.addCallback(self._launch_done, launch, handle)

    def _launch_done(self, result: ProcessResult, launch: Launch, handle) -> None:
        launch.release(handle)
        self._record(launch, result)

    def _record(self, launch: Launch, result: ProcessResult) -> None:
        if result.termination_reason == SHUTDOWN:
            d = self.drain.persist(f"requeuing {launch.label}", launch.requeue, self.engine)
        else:
            d = self.drain.persist(f"recording the result of {launch.label}",
                                   launch.finish, self.engine, result)
        self.drain.track(defer.ensureDeferred(d), f"recording a {launch.kind}'s result")
