"""
The operator's routes (SPEC §8): C{GET /metrics} (Prometheus text format,
rendered on the reactor thread from the server's private registry) and
C{GET /health} (each component with its status and the figure it is judged
by), and L{observe_request}, the per-request HTTP metrics.
"""

from __future__ import annotations

from klein.interfaces import IKleinRequest
from werkzeug.exceptions import HTTPException

from maxq.api.base import app
from maxq.api.http import json_response
from maxq.metrics import CONTENT_TYPE

# A scheduler with no pass for this many intervals is stalled (503).
STALLED_INTERVALS = 10
UNMATCHED = "unmatched"


def route_of(request) -> str:
    """
    The route template a request matched (C{/api/v1/runs/<run_id>}), never
    its path: ids stay out of metric labels.  Noted when its route runs
    (L{OperationsRoutes.attach_operations}); otherwise matched again.
    """
    route = getattr(request, "maxq_route", None)
    if route is not None:
        return route
    try:
        # Klein sets it when it dispatches; a request answered before (a
        # non-UTF-8 URL) has none.
        mapper = getattr(IKleinRequest(request), "mapper", None)
    except TypeError:
        return UNMATCHED
    if mapper is None:
        return UNMATCHED
    try:
        rule, _ = mapper.match(return_rule=True)
    except HTTPException:
        return UNMATCHED
    except Exception:
        return UNMATCHED
    return rule.rule


def observe_request(metrics, request, seconds: float) -> None:
    method = request.method.decode("latin-1") if request.method else "-"
    metrics.http_request(method, route_of(request), request.code, seconds)


class OperationsRoutes:
    """
    C{/metrics} and C{/health}.  L{attach_operations} gives them what they
    read (L{maxq.api.app.Api} does, when built with C{metrics}).
    """

    metrics = None
    flows = None
    config = None
    # async () -> int: paused schedules, when schedules exist (their module
    # sets it); 0 until then.

    def attach_operations(self, metrics, flows, config) -> None:
        self.metrics = metrics
        self.flows = flows
        self.config = config
        self._note_routes()

    def _note_routes(self) -> None:
        """
        Note on each request the template of the route that runs it, for
        the HTTP metrics: Klein keeps no trace of the rule it matched, and
        matching again costs 15-50 us a request.  Klein calls
        C{execute_endpoint} of this instance's bound app for every route.
        """
        bound = self.app
        # Klein holds the bound app weakly: keep it, and with it this hook.
        self._bound_app = bound
        templates = {rule.endpoint: rule.rule for rule in bound.url_map.iter_rules()}
        execute = bound.execute_endpoint

        def execute_endpoint(endpoint, request, *args, **kwargs):
            request.maxq_route = templates.get(endpoint, UNMATCHED)
            return execute(endpoint, request, *args, **kwargs)

        bound.execute_endpoint = execute_endpoint

    @app.route("/metrics", methods=["GET"])
    def prometheus_metrics(self, request):
        """
        Behind the API key when one is set; no query parameters needed, and
        any given are ignored (scrapers may add some).
        """
        if self.credentials.enabled:
            self._require_operator(request)
        metrics = self.metrics
        if self.scheduler is not None:
            metrics.steps_running.set(len(self.scheduler.steps))
        if self.config is not None:
            metrics.step_slots.set(self.config.max_concurrent_steps)
        body = metrics.render()
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode())
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return body

    @app.route("/health", methods=["GET"])
    async def health(self, request):
        # Probes may add query parameters (cache busters): they are ignored.
        database = await self.store.ping()
        services = {"database": "healthy" if database else "unhealthy"}
        scheduler = self._scheduler_health()
        services["scheduler"] = scheduler
        if database:
            services.update(await self._database_components())
        healthy = database and scheduler["status"] == "running"
        return json_response(request, 200 if healthy else 503, {
            "status": "healthy" if healthy else "unhealthy",
            "timestamp": int(self.clock.seconds() * 1000),
            "services": services,
        })

    def _scheduler_health(self) -> dict:
        scheduler = self.scheduler
        if scheduler is None:
            return {"status": "running", "lastPassAgoMs": None}
        last = getattr(scheduler, "last_pass_at", None)
        ago = None if last is None else int((self.clock.seconds() - last) * 1000)
        if not scheduler.running:
            status = "stopped"
        else:
            limit = STALLED_INTERVALS * scheduler.config.scheduler_interval_ms
            started = getattr(scheduler, "started_at", None)
            since = ago if ago is not None else (
                None if started is None else int((self.clock.seconds() - started) * 1000))
            status = "stalled" if since is not None and since > limit else "running"
        return {"status": status, "lastPassAgoMs": ago}

    async def _database_components(self) -> dict:
        out = {}
        if self.store.peers.shared and self.config is not None:
            live_after = int(self.clock.seconds() * 1000) - self.config.worker_timeout_ms
            try:
                live = await self.store.read(lambda tx: tx.live_servers(live_after))
                out["workers"] = {"status": "healthy" if live else "unhealthy",
                                  "live": live}
            except Exception as e:
                out["workers"] = {"status": "unknown", "live": None, "error": str(e)}
        try:
            entries = await self.engine.schedule_entries()
            paused = sum(1 for _name, spec, row in entries
                         if (row["paused"] if row is not None else spec.paused))
            out["schedules"] = {"status": "healthy", "count": len(entries),
                                "paused": paused}
        except Exception as e:
            out["schedules"] = {"status": "unknown", "count": None, "paused": None,
                                "error": str(e)}
        return out
