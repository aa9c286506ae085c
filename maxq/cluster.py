"""
Several MaxQ servers on one database: what each server does to take part.

- It registers itself and heartbeats every C{MAXQ_WORKER_HEARTBEAT_MS}; a
  server whose heartbeat is older than C{MAXQ_WORKER_TIMEOUT_MS} is declared
  lost by whichever live server notices first (one transaction removes it
  from the registry, so only one server recovers its work), and its steps
  and flow calls are put back without spending a retry.
- It listens for the notifications other servers send when they commit
  something that concerns everyone: it wakes its scheduler at once, sets a
  timer for a retry that comes due, and terminates the processes an abort
  or a pause on another server named.
- Notifications are hints.  On every heartbeat it also checks that each
  process it runs still belongs to a step the database says is running
  here, and terminates any that does not, so a lost notification delays an
  abort by a heartbeat at most.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

WORKER_LOST = "worker_lost"
REVOKED = "revoked"


class ClusterService(Service):
    log = Logger()
    name = "cluster"

    def __init__(self, engine, scheduler, config, clock):
        self.engine = engine
        # The other servers: registry, heartbeats and their notifications.
        self.peers = engine.store.peers
        self.scheduler = scheduler
        self.config = config
        self.clock = clock
        self._loop = task.LoopingCall(self._beat)
        self._loop.clock = clock
        self._beating: defer.Deferred | None = None

    def startService(self):
        # The server registered itself before it started claiming (see
        # MaxqService._start); from here on it keeps its heartbeat fresh.
        super().startService()
        self.peers.add_observer(self._notified)
        self._loop.start(self.config.worker_heartbeat_ms / 1000.0, now=False)

    async def _stop(self):
        if self._loop.running:
            self._loop.stop()
        if self._beating is not None and not self._beating.called:
            await self._beating
        try:
            await self.peers.leave(self.config.worker_id)
        except Exception:
            self.log.failure("could not remove this server from the registry")

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())

    # heartbeats ---------------------------------------------------------------

    def _beat(self):
        if self._beating is not None and not self._beating.called:
            return self._beating
        self._beating = defer.ensureDeferred(self._guarded_beat())
        return self._beating

    async def _guarded_beat(self):
        try:
            lost = await self.peers.heartbeat(self.config.worker_id,
                                              self.config.worker_timeout_ms,
                                              self.config.labels)
            for worker in lost:
                self.log.warn("server {worker} stopped heartbeating; taking its work back",
                              worker=worker)
                outcome = await self.engine.recover_interrupted([worker], WORKER_LOST)
                self.log.info("recovered from {worker}: {outcome}", worker=worker,
                              outcome=outcome)
            await self._check_ownership()
        except Exception:
            # The database may be away; the next beat tries again.
            self.log.failure("heartbeat failed")

    async def _check_ownership(self) -> None:
        """
        Terminate local processes whose step or call the database no longer
        says is running here (aborted, paused or taken back meanwhile).
        """
        local_steps = {(run, step): entry[0] for (run, step), entry
                       in self.scheduler.steps.items()}
        local_flows = {run: entry[0] for run, entry in self.scheduler.flow_calls.items()}
        if not local_steps and not local_flows:
            return
        steps, calls = await self.engine.running_on(self.config.worker_id)
        owned_steps = {(s["run_id"], s["id"]): s["claim_no"] for s in steps}
        owned_calls = {c["run_id"]: c["id"] for c in calls}
        stray = [(run, step, claim) for (run, step), claim in local_steps.items()
                 if owned_steps.get((run, step)) != claim]
        if stray:
            self.scheduler.terminate_steps(stray, REVOKED)
        for run, call_id in local_flows.items():
            if owned_calls.get(run) != call_id:
                self.scheduler.terminate_flow(run, REVOKED)

    # notifications ------------------------------------------------------------

    def _notified(self, message: dict) -> None:
        if message.get("from") == self.config.worker_id:
            return
        for when in message.get("at", ()):
            self.scheduler.wake_at(when)
        kill = [tuple(k) for k in message.get("kill", ())]
        reason = message.get("reason", REVOKED)
        if kill:
            self.scheduler.terminate_steps(kill, reason)
        for run in message.get("flows", ()):
            self.scheduler.terminate_flow(run, reason)
        if message.get("recheck"):
            self._beat()
        if message.get("wake"):
            self.scheduler.wake()
