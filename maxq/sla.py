"""
SLAs (SPEC §8): a run of a flow whose flow.yaml says C{sla: 30m} and that
is still unfinished that long after it started is marked once
(C{runs.sla_missed_at}, a conditional update: one server, one time) and, in
the same transaction, gets its C{sla_missed} notifications and a log entry.

No scan per scheduler pass: one timer is set at the earliest deadline,
found at start from the unfinished runs (the deadline is C{started_at} plus
the flow's sla, so it survives restarts), moved earlier by each run this
server starts, and looked for again every C{poll_s} (runs other servers
started, flow.yaml files that gained an sla).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from maxq.engine.unit import log_event
from maxq.errors import StoreUnavailable
from maxq.operations import write_deliveries

POLL_S = 60.0


class SlaWatch(Service):
    log = Logger()
    name = "sla"

    def __init__(self, store, flows, config, clock, dispatcher=None,
                 poll_s: float = POLL_S, metrics=None, on_events=None):
        self.store = store
        # Called after a commit that wrote an event (the event streams).
        self.on_events = on_events
        self.metrics = metrics
        self.flows = flows
        self.config = config
        self.clock = clock
        self.dispatcher = dispatcher
        self._timer = None
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = clock
        self.poll_s = poll_s
        self._current: defer.Deferred | None = None
        self._again = False

    def _now(self) -> int:
        return int(self.clock.seconds() * 1000)

    def slas(self) -> dict[str, int]:
        """
        C{{flow: sla_ms}} of the flows that have one.
        """
        found = {}
        for info in self.flows.list_flows():
            sla = self.flows.config(info["name"]).section("notify").get("sla_ms")
            if sla:
                found[info["name"]] = sla
        return found

    def startService(self):
        super().startService()
        self._loop.start(self.poll_s, now=True)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        return self._current if self._current is not None else defer.succeed(None)

    def run_started(self, flow: str) -> None:
        """
        A run of C{flow} started here now: its deadline may be the earliest.
        """
        sla = self.flows.config(flow).section("notify").get("sla_ms")
        if sla:
            self._arm(self._now() + sla)

    def _arm(self, when_ms: int) -> None:
        if not self.running:
            return
        delay = max(0.0, when_ms / 1000.0 - self.clock.seconds())
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, self.check)

    def check(self):
        """
        Mark every run past its deadline, then set the timer at the next.
        """
        if self._current is not None and not self._current.called:
            self._again = True
            return self._current
        self._current = defer.ensureDeferred(self._guarded())
        return self._current

    async def _guarded(self):
        try:
            while True:
                self._again = False
                await self._check()
                if not self._again:
                    break
        except StoreUnavailable as e:
            self.log.warn("SLA check skipped: {error}", error=str(e))
            self._arm(self._now() + 5000)
        except Exception:
            self.log.failure("SLA check failed")

    async def _check(self) -> None:
        slas = self.slas()
        if not slas:
            return
        now = self._now()
        runs = await self.store.read(
            lambda tx: tx.unfinished_runs_started(list(slas), None))
        missed = [(run_id, flow) for run_id, flow, started in runs
                  if started + slas[flow] <= now]
        marked = 0
        for run_id, flow in missed:
            if await self.store.transaction(self._mark, run_id, flow, slas[flow], now):
                marked += 1
                self.log.warn("run {run_id} of {flow} missed its SLA", run_id=run_id,
                              flow=flow)
                if self.metrics is not None:
                    self.metrics.sla_was_missed(flow)
                if self.on_events is not None:
                    self.on_events()
        if marked and self.dispatcher is not None:
            self.dispatcher.wake()
        upcoming = [started + slas[flow] for _id, flow, started in runs
                    if started + slas[flow] > now]
        if upcoming:
            self._arm(min(upcoming))

    async def _mark(self, tx, run_id: str, flow: str, sla_ms: int, now: int) -> bool:
        if not await tx.mark_sla_missed(run_id, now):
            return False
        await log_event(tx, run_id, "run", run_id, "warn",
                        f"run missed its SLA of {sla_ms // 1000} s", "run_sla_missed",
                        now, slaMs=sla_ms)
        await write_deliveries(tx, self.flows, self.config, run_id, flow, "sla_missed",
                               now)
        await tx.insert_events([{"type": "run", "run_id": run_id, "flow_name": flow,
                                 "data": {"change": "sla_missed", "slaMs": sla_ms},
                                 "at": now}])
        return True
