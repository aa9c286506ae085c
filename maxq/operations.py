"""
What operations add to every unit of work, and the timed figures of the
whole database (SPEC §8).

L{OperationsHooks} is the engine's C{hooks}: before a unit commits it
writes the notifications of the runs that unit ended (the outbox, in the
same transaction, so a crash loses none); after the commit it counts the
unit's tallies into the metrics and wakes the dispatcher and the SLA watch.
L{ClusterFigures} reads the database's totals every
C{MAXQ_METRICS_CLUSTER_INTERVAL_MS} for the C{maxq_cluster_*} gauges.
"""

from __future__ import annotations

import json
import uuid

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from maxq import metrics as metrics_module
from maxq.api.render import render_run
from maxq.model import COMPLETED
from maxq.notify import iso_time, targets_of
from maxq.store.operations import RUN_STATUSES, STEP_STATUSES


def _event(status: str) -> str:
    return "completed" if status == COMPLETED else "failed"


async def write_deliveries(tx, flows, config, run_id: str, flow_name: str, event: str,
                           now: int) -> int:
    """
    Queue a delivery of C{event} about the run for each target that wants
    it; the body is the run as C{GET /runs/{id}} shows it (without stages),
    read in this transaction.  Returns how many were queued.
    """
    targets = [t for t in targets_of(flows, config, flow_name) if event in t.on]
    if not targets:
        return 0
    run = await tx.get_run(run_id)
    payload = json.dumps({"type": f"run.{event}", "timestamp": iso_time(now),
                          "data": render_run(run)}, separators=(",", ":"))
    await tx.insert_deliveries([
        {"id": "msg_" + uuid.uuid4().hex, "run_id": run_id, "url": t.url,
         "type": f"run.{event}", "secret_env": t.secret_env, "payload": payload,
         "next_attempt_at": now, "created_at": now}
        for t in targets
    ])
    return len(targets)


class OperationsHooks:
    """
    The engine's hooks (see L{maxq.engine.unit.transact}): C{dispatcher}
    is woken for the notifications a commit wrote, C{sla} told of runs
    started (either None: nothing to tell).
    """

    def __init__(self, metrics, flows, config, clock, dispatcher=None, sla=None):
        self.metrics = metrics
        self.flows = flows
        self.config = config
        self.clock = clock
        self.dispatcher = dispatcher
        self.sla = sla

    async def before_commit(self, tx, effects) -> None:
        now = int(self.clock.seconds() * 1000)
        for run in effects.ended_runs:
            await write_deliveries(tx, self.flows, self.config, run["id"],
                                   run["flow_name"], _event(run["status"]), now)

    def after_commit(self, effects) -> None:
        if effects.tallies:
            self.metrics.count(effects.tallies)
            if self.sla is not None:
                for kind, flow, _status, _seconds in effects.tallies:
                    if kind == metrics_module.RUN_STARTED:
                        self.sla.run_started(flow)
        if self.dispatcher is not None and any(
                _event(run["status"]) in t.on
                for run in effects.ended_runs
                for t in targets_of(self.flows, self.config, run["flow_name"])):
            self.dispatcher.wake()

    def step_finished(self, flow: str, result) -> None:
        """
        A step's attempt was recorded: completed, or failed (retried or not).
        """
        self.metrics.count([metrics_module.tally(
            metrics_module.STEP_FINISHED, flow,
            COMPLETED if result.succeeded else "failed",
            result.started_ms, result.ended_ms)])


class ClusterFigures(Service):
    """
    The whole database's runs and steps by status, the oldest runnable
    pending step's age and the live servers, read every C{interval_s}.
    """

    log = Logger()
    name = "cluster-figures"

    def __init__(self, store, metrics, config, clock, interval_s: float):
        self.store = store
        self.metrics = metrics
        self.config = config
        self.clock = clock
        self._loop = task.LoopingCall(self._read)
        self._loop.clock = clock
        self.interval_s = interval_s
        self._current = None

    def startService(self):
        super().startService()
        self._loop.start(self.interval_s, now=True)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return self._current if self._current is not None else defer.succeed(None)

    def _read(self):
        self._current = defer.ensureDeferred(self._guarded())
        return self._current

    async def _guarded(self):
        now = int(self.clock.seconds() * 1000)
        live_after = now - self.config.worker_timeout_ms
        try:
            figures = await self.store.read(lambda tx: tx.cluster_figures(now, live_after))
        except Exception as e:
            # A failing read must not stop the loop; the gauges keep their
            # last values until the next one.
            self.log.warn("cluster figures not read: {error}", error=str(e))
            return
        self.metrics.set_cluster(figures["runs"], figures["steps"],
                                 figures["oldestPendingMs"] / 1000.0,
                                 figures["servers"], RUN_STATUSES, STEP_STATUSES)
