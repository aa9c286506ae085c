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
from pathlib import Path

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from maxq.engine import Engine
from maxq.errors import StoreUnavailable
from maxq.flows import FlowsRoot
from maxq.process import ProcessResult, ScriptRunner
from maxq.tokens import Credentials

LIB_PATH = Path(__file__).resolve().parent / "lib" / "maxq.sh"
SHUTDOWN = "shutdown"
# Recording a result while the database is busy or full: first retry after
# RETRY_FIRST_S, doubling up to RETRY_MAX_S, for as long as the server runs;
# once it stops, for RECORD_DEADLINE_S more (what is still unrecorded then
# stays "running" in the database and is recovered on the next start).
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0
RECORD_DEADLINE_S = 5.0
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
    log = Logger()
    name = "scheduler"

    def __init__(self, engine: Engine, runner: ScriptRunner, flows: FlowsRoot, config,
                 clock, base_env: dict[str, str] | None = None,
                 credentials: Credentials | None = None):
        self.credentials = credentials or Credentials(())
        self.engine = engine
        self.runner = runner
        self.flows = flows
        self.config = config
        self.clock = clock
        self.base_env = inherited_environment() if base_env is None else base_env
        self.api_url = config.api_base(config.port)
        # (run_id, step_id) -> (claim_no, handle); run_id -> (call_id, handle)
        self.steps: dict[tuple[str, str], tuple[int, object]] = {}
        self.flow_calls: dict[str, tuple[int, object]] = {}
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
        self._recording: set[defer.Deferred] = set()
        self._current_pass: defer.Deferred | None = None
        # Shutdown: the grace period's waiter; told to stop at once; no more
        # database retries; retries sleeping.
        self._grace_waiter: defer.Deferred | None = None
        self._hurried = False
        self._abandon = False
        self._sleeps: dict[defer.Deferred, object] = {}

    # ---------------------------------------------------------------- service

    def startService(self):
        super().startService()
        self._stopping = False
        self._hurried = False
        self._abandon = False
        self.engine.control = self
        self._loop.start(self.config.scheduler_interval_ms / 1000.0, now=True)

    async def _stop(self):
        self._stopping = True
        if self._loop.running:
            self._loop.stop()
        for call in [self._wake_call, self._groups_call, *self._timers]:
            if call is not None and call.active():
                call.cancel()
        self._wake_call = None
        self._timers.clear()
        # A pass under way finishes: what it claimed is started (and then
        # given the grace like everything else).
        if self._current_pass is not None and not self._current_pass.called:
            await self._current_pass
        await self._grace()
        if self._hurried:
            self.runner.kill_all(SHUTDOWN)
        # Whatever still runs is terminated and goes back to pending.
        await self.runner.terminate_all(SHUTDOWN)
        give_up = self.clock.callLater(RECORD_DEADLINE_S, self._give_up)
        try:
            while self._recording:
                await defer.DeferredList(list(self._recording), consumeErrors=True)
        finally:
            if give_up.active():
                give_up.cancel()

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _grace(self) -> None:
        """
        Let the running processes finish on their own, for up to
        C{shutdown_grace_ms}, unless told to stop at once.
        """
        handles = [h for _, h in [*self.steps.values(), *self.flow_calls.values()]]
        grace = self.config.shutdown_grace_ms / 1000.0
        if not handles or grace <= 0 or self._hurried:
            return
        self.log.info(
            "stopping: waiting up to {grace}s for {n} running processes "
            "(a second SIGTERM stops at once)", grace=grace, n=len(handles))
        waiter = self._grace_waiter = defer.Deferred()

        def over(_=None):
            if not waiter.called:
                waiter.callback(None)

        timer = self.clock.callLater(grace, over)
        defer.DeferredList([h.done for h in handles], consumeErrors=True).addCallback(over)
        try:
            await waiter
        finally:
            self._grace_waiter = None
            if timer.active():
                timer.cancel()

    def hurry(self) -> None:
        """
        Stop now (a second SIGTERM during the stop): no more grace, SIGKILL
        every process group, and stop retrying the database.  The database
        stays consistent: interrupted work is requeued if the database
        answers, else recovered on the next start.
        """
        self._hurried = True
        if self._grace_waiter is not None and not self._grace_waiter.called:
            self._grace_waiter.callback(None)
        if self._stopping:
            self.runner.kill_all(SHUTDOWN)
        self._give_up()

    def _give_up(self) -> None:
        self._abandon = True
        for d, call in list(self._sleeps.items()):
            if call.active():
                call.cancel()
                d.callback(None)

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
        calls, steps = await self.engine.claim(self.config.worker_id, batch, step_limit)
        for call in calls:
            self._start_flow_call(call)
        for step in steps:
            self._start_step(step)
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
            self._track(d, "recording process groups")

    def _groups_not_recorded(self, failure) -> None:
        failure.trap(StoreUnavailable)
        # Not retried: a restart after a crash also finds unrecorded groups,
        # by the environment of their processes (maxq.leftovers).
        self.log.warn("process groups not recorded: {error}", error=str(failure.value))

    # ------------------------------------------------------------------ steps

    def _step_env(self, step: dict) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(step["env"] or {})
        env.update(
            MAXQ_RUN_ID=step["run_id"],
            MAXQ_STEP_ID=step["id"],
            MAXQ_STEP_NAME=step["name"],
            MAXQ_FLOW_NAME=step["flow_name"],
            MAXQ_STAGE=step["stage"],
            MAXQ_API=self.api_url,
            MAXQ_ATTEMPT=str(step["retry_count"] + 1),
            MAXQ_LIB=str(LIB_PATH),
        )
        if self.credentials.enabled:
            env["MAXQ_TOKEN"] = self.credentials.script_token(step["run_id"], step["id"])
        return env

    def _start_step(self, step: dict) -> None:
        key = (step["run_id"], step["id"])
        script = self.flows.step_script(step["flow_name"], step["name"])
        if script is None:
            self._record_step(step, _not_started(
                self.engine.now(), f"step script steps/{step['name']}/step.sh is missing "
                "or not executable\n"))
            return
        try:
            handle = self.runner.spawn(script, script.parent, self._step_env(step),
                                       step["timeout_seconds"])
        except OSError as e:
            self._record_step(step, _not_started(self.engine.now(), f"cannot start: {e}\n"))
            return
        self.steps[key] = (step["claim_no"], handle)
        handle.done.addCallback(self._step_done, step, handle)

    def _step_done(self, result: ProcessResult, step: dict, handle) -> None:
        key = (step["run_id"], step["id"])
        entry = self.steps.get(key)
        if entry is not None and entry[1] is handle:
            del self.steps[key]
        self._record_step(step, result)

    def _record_step(self, step: dict, result: ProcessResult) -> None:
        args = (step["run_id"], step["id"], step["claim_no"])
        if result.termination_reason == SHUTDOWN:
            d = self._persist(f"requeuing step {step['id']}", self.engine.requeue_step,
                              *args)
        else:
            d = self._persist(f"recording the result of step {step['id']}",
                              self.engine.step_finished, *args, result)
        self._track(defer.ensureDeferred(d), "recording a step's result")

    async def _persist(self, what: str, fn, *args):
        """
        C{await fn(*args)}, retried with backoff while the database is busy
        or full: a result is never dropped because of a locked database.
        Each attempt is one transaction, all or nothing, so retrying is safe.
        """
        delay = RETRY_FIRST_S
        while True:
            try:
                return await fn(*args)
            except StoreUnavailable as e:
                if self._abandon:
                    self.log.error(
                        "gave up {what} while stopping ({error}); the next start "
                        "recovers it", what=what, error=str(e))
                    return None
                self.log.warn("{what}: {error}; retrying in {delay}s", what=what,
                              error=str(e), delay=delay)
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _sleep(self, seconds: float) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._sleeps[d] = self.clock.callLater(seconds, d.callback, None)

        def forget(result):
            self._sleeps.pop(d, None)
            return result

        return d.addBoth(forget)

    def _track(self, d: defer.Deferred, what: str) -> None:
        self._recording.add(d)

        def done(outcome):
            self._recording.discard(d)
            return outcome

        d.addBoth(done)
        d.addErrback(lambda f: self.log.failure("failed {what}", f, what=what))

    # ------------------------------------------------------------- flow calls

    def _flow_env(self, call: dict) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(
            MAXQ_RUN_ID=call["run_id"],
            MAXQ_FLOW_NAME=call["flow_name"],
            MAXQ_API=self.api_url,
            MAXQ_COMPLETED_STAGE=call["completed_stage"] or "",
            MAXQ_LIB=str(LIB_PATH),
        )
        if call["failed_stage"]:
            env["MAXQ_FAILED_STAGE"] = call["failed_stage"]
        if self.credentials.enabled:
            env["MAXQ_TOKEN"] = self.credentials.script_token(call["run_id"])
        return env

    def _start_flow_call(self, call: dict) -> None:
        script = self.flows.flow_script(call["flow_name"])
        if script is None:
            self._record_flow_call(call, _not_started(
                self.engine.now(), "flow.sh is missing or not executable\n"))
            return
        try:
            handle = self.runner.spawn(script, script.parent, self._flow_env(call))
        except OSError as e:
            self._record_flow_call(call, _not_started(self.engine.now(),
                                                      f"cannot start: {e}\n"))
            return
        self.flow_calls[call["run_id"]] = (call["id"], handle)
        handle.done.addCallback(self._flow_call_done, call, handle)

    def _flow_call_done(self, result: ProcessResult, call: dict, handle) -> None:
        entry = self.flow_calls.get(call["run_id"])
        if entry is not None and entry[1] is handle:
            del self.flow_calls[call["run_id"]]
        self._record_flow_call(call, result)

    def _record_flow_call(self, call: dict, result: ProcessResult) -> None:
        if result.termination_reason == SHUTDOWN:
            d = self._persist(f"requeuing flow call {call['id']}",
                              self.engine.requeue_flow_call, call["id"])
        else:
            d = self._persist(f"recording the result of flow call {call['id']}",
                              self.engine.flow_call_finished, call["id"], result)
        self._track(defer.ensureDeferred(d), "recording a flow call's result")


def _not_started(now_ms: int, message: str) -> ProcessResult:
    """
    The result of a script that could not be started: exit status 127, as a
    shell reports a command it cannot run.
    """
    return ProcessResult(exit_code=127, signal=None, stdout="", stderr=message,
                         termination_reason=None, started_ms=now_ms, ended_ms=now_ms)
