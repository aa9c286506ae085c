"""
The composition root: builds the store, the engine, the scheduler and the
HTTP site from a L{Config}, and starts and stops them in the right order.
Which backend is L{open_store}'s choice; what differs between one server and
several is asked of the store's peers.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.web.server import Site

from maxq import notify
from maxq.api.app import Api
from maxq.api.http import LimitedRequest, Utf8PathGuard
from maxq.api.operations import observe_request
from maxq.capture import OutputRecorder
from maxq.cluster import ClusterService
from maxq.config import Config
from maxq.engine import MAX_INTERRUPTIONS, Engine
from maxq.firing import FiringService
from maxq.flows import FlowsRoot
from maxq.leftovers import LeftoverProcesses
from maxq.metrics import Metrics
from maxq.operations import ClusterFigures, OperationsHooks
from maxq.process import ScriptRunner
from maxq.scheduler import SchedulerService
from maxq.sla import SlaWatch
from maxq.store import open_store
from maxq.streams import EventHub
from maxq.tokens import Credentials


class MaxqSite(Site):
    requestFactory = LimitedRequest
    # Twisted's per-request access log line costs more than a step does.
    noisy = False

    def __init__(self, resource, max_body_bytes: int, metrics=None, clock=None):
        super().__init__(resource, requestFactory=LimitedRequest)
        self.max_body_bytes = max_body_bytes
        # The HTTP metrics: each request is timed from its dispatch to its
        # end (log() is called once it is written).
        self.metrics = metrics
        self.clock = clock

    def getResourceFor(self, request):
        if self.clock is not None:
            request.maxq_started = self.clock.seconds()
        return super().getResourceFor(request)

    def log(self, request):
        started = getattr(request, "maxq_started", None)
        if self.metrics is not None and started is not None:
            try:
                observe_request(self.metrics, request, self.clock.seconds() - started)
            except Exception:
                # Counting must never break a response.
                MaxqService.log.failure("HTTP metrics not counted")


class MaxqService(MultiService):
    """
    Start order: store (migrated) -> HTTP listening -> scheduler; stop order
    is the reverse, so no process outlives the server and no result is lost.
    """

    log = Logger()

    def __init__(self, config: Config, reactor, endpoint_description: str | None = None):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.store = open_store(config, reactor)
        self.flows = FlowsRoot(config.flows_root)
        # SPEC §7: the event streams' hub; every commit that writes events
        # wakes it.
        self.events = EventHub(self.store, reactor, config.event_retention_ms)
        self._build_operations()
        # What a crashed predecessor left running is terminated before its
        # work is put back (Engine.recover_interrupted).
        self.engine = Engine(
            self.store, self.flows, config, reactor,
            leftovers=LeftoverProcesses(reactor, grace_ms=config.abort_grace_ms),
            hooks=self.hooks, on_events=self.events.wake,
        )
        self.runner = ScriptRunner(
            reactor,
            capture_bytes=config.max_log_capture,
            grace_ms=config.abort_grace_ms,
            drain_ms=config.output_drain_ms,
        )
        credentials = Credentials(config.api_keys)
        # The recorder of each process's output as it arrives (SPEC §7).
        self.output = OutputRecorder(self.store, reactor, config.max_output_bytes)
        # Scripts' MAXQ_API: where this server listens, known once it does.
        self.scheduler = SchedulerService(self.engine, self.runner, self.flows, config,
                                          reactor, credentials=credentials,
                                          api_url=lambda: self.api_url,
                                          output=self.output)
        # Scheduled flows' timers (SPEC §5).
        self.firing = FiringService(self.engine, self.flows, reactor)
        self.api = Api(self.engine, self.store, reactor, self.scheduler, credentials,
                       events=self.events, metrics=self.metrics, flows=self.flows,
                       config=config, dispatcher=self.dispatcher)
        # Only a shared database has other servers to coordinate with.
        self.cluster = (ClusterService(self.engine, self.scheduler, config, reactor)
                        if self.store.peers.shared else None)
        self.site = MaxqSite(Utf8PathGuard(self.api.app.resource()), config.max_body_bytes,
                             self.metrics, reactor)
        self.endpoint_description = endpoint_description or (
            f"tcp:{config.port}:interface={_escape(config.host)}"
        )
        self.listening: defer.Deferred = defer.Deferred()
        self.port = None
        self.api_url: str | None = None
        self._starting: defer.Deferred | None = None
        # Set by twistd's makeService: while stopping, a second SIGTERM (or
        # SIGINT) cuts the shutdown grace short.  Off for embedded use
        # (tests), where signals belong to the host program.
        self.handle_signals = False

    def _build_operations(self) -> None:
        """
        Metrics, the notification dispatcher, the SLA watch and the
        cluster figures (SPEC §8), and the engine's hooks that feed them.
        """
        config, reactor = self.config, self.reactor
        notify.check_config(config)
        self.metrics = Metrics()
        # Other servers' deliveries (or those they let go) are found by a
        # modest poll; this server's are sent at once.
        poll_s = 5.0 if self.store.peers.shared else None
        self.dispatcher = notify.Dispatcher(
            self.store, config, reactor, self.metrics, poll_s=poll_s,
            on_events=self.events.wake)
        self.sla = SlaWatch(self.store, self.flows, config, reactor, self.dispatcher,
                            metrics=self.metrics, on_events=self.events.wake)
        self.hooks = OperationsHooks(self.metrics, self.flows, config, reactor,
                                     dispatcher=self.dispatcher, sla=self.sla)
        interval = config.metrics_cluster_interval_ms
        self.cluster_figures = (ClusterFigures(self.store, self.metrics, config, reactor,
                                               interval / 1000.0) if interval else None)

    def _operations(self) -> list:
        return [s for s in (self.dispatcher, self.sla, self.cluster_figures)
                if s is not None]

    def startService(self):
        super().startService()
        self._starting = defer.ensureDeferred(self._start())
        self._starting.addErrback(self._start_failed)

    async def _start(self):
        if not self.config.api_keys and self.config.host not in ("127.0.0.1", "::1",
                                                                 "localhost"):
            self.log.warn(
                "WARNING: MaxQ listens on {host} with no MAXQ_API_KEY: anyone who can "
                "reach this address can run flows on this machine. Set MAXQ_API_KEY.",
                host=self.config.host,
            )
        await self.store.start()
        if self.cluster is not None:
            # Registered before claiming anything, so no other server takes
            # this one's first claims for orphans.
            await self.store.peers.heartbeat(self.config.worker_id,
                                             self.config.worker_timeout_ms,
                                             self.config.labels)
        await self._recover()
        await self.engine.create_pools(self.config.pool_slots)
        await self.events.startService()
        self.output.startService()
        endpoint = endpoints.serverFromString(self.reactor, self.endpoint_description)
        self.port = await endpoint.listen(self.site)
        self.api_url = self.config.api_base(self.port.getHost().port)
        self.scheduler.setServiceParent(self)
        self.firing.setServiceParent(self)
        if self.cluster is not None:
            self.cluster.setServiceParent(self)
        for service in self._operations():
            service.setServiceParent(self)
        self.log.info(
            "MaxQ listening on {url} (flows: {root}, {backend} database, worker {worker})",
            url=self.api_url, root=str(self.config.flows_root),
            backend=self.config.backend, worker=self.config.worker_id,
        )
        self.listening.callback(self.port)

    async def _recover(self):
        """
        Before serving: put back what was running when the previous server
        died.  On a database this server owns alone everything still running
        is ours; on a shared one only what ran under our worker id.
        """
        worker_ids = self.store.peers.recovery_scope(self.config.worker_id)
        found = await self.engine.recover_interrupted(worker_ids, SERVER_RESTART)
        if any(found.values()):
            self.log.warn(
                "recovered work interrupted by a crash: {steps} steps back to pending, "
                "{failed} failed after {limit} interruptions, {calls} flow callbacks "
                "to deliver again, {groups} leftover process groups terminated",
                steps=found["steps"], failed=found["failed"], calls=found["flowCalls"],
                groups=found["processGroups"], limit=MAX_INTERRUPTIONS,
            )

    def _start_failed(self, failure):
        self.log.failure("MaxQ failed to start", failure)
        if not self.listening.called:
            self.listening.errback(failure)

    async def _stop(self):
        if self._starting is not None and not self._starting.called:
            await self._starting
        if self.firing.running:
            await self.firing.stopService()
        for service in self._operations():
            if service.running:
                await service.stopService()
        if self.scheduler.running:
            await self.scheduler.stopService()
        # After the scheduler put its work back: leaving the registry earlier
        # would let another server take running steps for orphans.
        if self.cluster is not None and self.cluster.running:
            await self.cluster.stopService()
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        # After the scheduler: its processes' last output is written.
        await self.output.stop()
        self.events.stopService()
        await self.store.stop()
        self.runner.close()

    def stopService(self):
        # Children are stopped by _stop in dependency order, not by
        # MultiService's reverse-registration order.
        self.running = 0
        if self.handle_signals:
            self._catch_second_signal()
        return defer.ensureDeferred(self._stop())

    def stop_now(self) -> None:
        """
        Cut a stop short: no more grace for running processes (they are
        killed and their work requeued) and no more database retries.  What
        a second SIGTERM or SIGINT calls, and the public way for an embedder
        (or a test) to make a C{stopService()} under way end at once.
        """
        self.log.warn("stopping at once")
        self.scheduler.hurry()

    def _catch_second_signal(self) -> None:
        import signal

        def handler(signum, frame):
            self.reactor.callFromThread(self.stop_now)

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, handler)
            except ValueError:
                # Not the main thread: leave signals alone.
                return


SERVER_RESTART = "server_restart"


def _escape(host: str) -> str:
    return host.replace(":", "\\:")


def build_service(config: Config, reactor=None,
                  endpoint_description: str | None = None) -> MaxqService:
    """
    The whole server as one service.  C{reactor} defaults to the global one.
    """
    if reactor is None:
        from twisted.internet import reactor
    return MaxqService(config, reactor, endpoint_description)
