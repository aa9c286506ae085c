"""
The HTTP API (SPEC §3): a Klein app whose routes translate requests into
engine operations and engine results into JSON.  No SQL and no processes
here.
"""

from __future__ import annotations

import json
from importlib import resources

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from maxq import model, secrets
from maxq.api.http import FlowNameConverter, Query, header, json_response, read_json
from maxq.engine import Engine
from maxq.errors import (
    ApiError, Conflict, Invalid, Refusal, StoreUnavailable, flow_not_found,
)
from maxq.errors import NotFound as Missing
from maxq.tokens import Credentials

PREFIX = "/api/v1"
RUN_SORTS = ("createdAt", "startedAt", "completedAt")
STEP_SORTS = ("createdAt", "startedAt", "completedAt", "id", "name")
ORDERS = ("asc", "desc")
PAGINATION = ("limit", "offset", "sortBy", "sortOrder")
# The one place a domain error becomes an HTTP status.
STATUSES = ((Invalid, 400), (Missing, 404), (Conflict, 409))

_openapi: bytes | None = None


def openapi_document() -> dict:
    """
    The OpenAPI 3.1 description of this API (C{maxq/api/openapi.json}).
    """
    global _openapi
    if _openapi is None:
        _openapi = resources.files("maxq.api").joinpath("openapi.json").read_bytes()
    return json.loads(_openapi)


def _duration(row: dict) -> int | None:
    if row.get("started_at") is not None and row.get("completed_at") is not None:
        return row["completed_at"] - row["started_at"]
    return None


def render_run(row: dict, full: bool = True) -> dict:
    out = {
        "id": row["id"],
        "flowName": row["flow_name"],
        "status": row["status"],
        "name": row.get("name"),
        "description": row.get("description"),
        "input": row.get("input"),
        "output": row.get("output"),
        "error": row.get("error"),
        "metadata": row.get("metadata"),
        "terminationReason": row.get("termination_reason"),
        "createdAt": row["created_at"],
        "startedAt": row.get("started_at"),
        "completedAt": row.get("completed_at"),
        "durationMs": _duration(row),
    }
    if full:
        out["stdout"] = row.get("stdout", "")
        out["stderr"] = row.get("stderr", "")
    if "stages" in row:
        out["stages"] = [
            {
                "name": s["name"],
                "status": s["status"],
                "final": bool(s["final"]),
                "failFast": bool(s["fail_fast"]),
                "createdAt": s["created_at"],
                "completedAt": s["completed_at"],
            }
            for s in row["stages"]
        ]
    return out


def render_step(row: dict, full: bool = True) -> dict:
    out = {
        "id": row["id"],
        "runId": row["run_id"],
        "stage": row["stage"],
        "name": row["name"],
        "status": row["status"],
        "dependsOn": row["depends_on"],
        "retryCount": row["retry_count"],
        "maxRetries": row["max_retries"],
        "retryDelayMs": row["retry_delay_ms"],
        "retryBackoff": row["retry_backoff"],
        "timeoutSeconds": row["timeout_seconds"],
        "env": secrets.mask_env(row["env"]),
        "fields": row["fields"],
        "error": row["error"],
        "exitCode": row["exit_code"],
        "createdAt": row["created_at"],
        "queuedAt": row["queued_at"],
        "startedAt": row["started_at"],
        "completedAt": row["completed_at"],
        "durationMs": row["duration_ms"],
        "workerId": row["worker_id"],
        "terminationReason": row["termination_reason"],
    }
    if full:
        out["stdout"] = row.get("stdout") or ""
        out["stderr"] = row.get("stderr") or ""
    return out


def render_log(row: dict) -> dict:
    return {
        "id": row["id"],
        "runId": row["run_id"],
        "entityType": row["entity_type"],
        "entityId": row["entity_id"],
        "level": row["level"],
        "message": row["message"],
        "metadata": row["metadata"],
        "createdAt": row["created_at"],
    }


def refusal_status(error: Refusal) -> int:
    """
    The HTTP status of a domain error.
    """
    for kind, status in STATUSES:
        if isinstance(error, kind):
            return status
    return 400


class Api:
    """
    The routes.  C{app.resource()} of an instance is what the server serves.
    """

    app = Klein()
    app.url_map.converters["flow"] = FlowNameConverter
    log = Logger()

    def __init__(self, engine: Engine, store, clock, scheduler=None,
                 credentials: Credentials | None = None):
        self.engine = engine
        self.store = store
        self.clock = clock
        self.scheduler = scheduler
        self.credentials = credentials or Credentials(())

    async def _authorize(self, request, run_id: str | None = None,
                         fields_of: str | None = None) -> None:
        """
        Let the operator do anything; let a script's token act only on its
        own run (C{run_id} given: a route scripts may use), post fields only
        for its own step, and only while the run is unfinished.
        """
        principal = self.credentials.identify(header(request, "Authorization"))
        if principal is None:
            raise ApiError(401, "UNAUTHORIZED",
                           "missing or invalid credentials: send Authorization: Bearer <key>")
        if principal.is_operator:
            return
        if run_id is None or principal.run_id != run_id:
            raise ApiError(403, "FORBIDDEN", "a script token may not do this")
        if fields_of is not None and principal.step_id not in (None, fields_of):
            raise ApiError(403, "FORBIDDEN", "a step's token may post only its own fields")
        if await self.engine.run_finished(run_id):
            raise ApiError(403, "FORBIDDEN", "this run has ended; its script tokens with it")

    # ---------------------------------------------------------------- errors

    @app.handle_errors(Refusal)
    def _refused(self, request, failure):
        error = failure.value
        status = error.status if isinstance(error, ApiError) else refusal_status(error)
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="maxq"')
        return json_response(request, status, error.body())

    @app.handle_errors(StoreUnavailable)
    def _unavailable(self, request, failure):
        self.log.warn("database unavailable: {error}", error=failure.value)
        return json_response(request, 503, {
            "error": "the database is unavailable; try again",
            "code": "SERVICE_UNAVAILABLE",
            "details": {"reason": str(failure.value)},
        })

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        return json_response(request, 404, {
            "error": f"no route for {request.path.decode('latin-1', 'replace')}",
            "code": "NOT_FOUND",
            "details": {},
        })

    @app.handle_errors(MethodNotAllowed)
    def _method_not_allowed(self, request, failure):
        allowed = sorted(failure.value.valid_methods or [])
        if allowed:
            request.setHeader(b"Allow", ", ".join(allowed).encode())
        return json_response(request, 405, {
            "error": f"method {request.method.decode('latin-1')} not allowed here",
            "code": "METHOD_NOT_ALLOWED",
            "details": {"allowed": allowed},
        })

    @app.handle_errors(Exception)
    def _server_fault(self, request, failure):
        self.log.failure("unhandled error serving {path}", failure,
                         path=request.path.decode("latin-1", "replace"))
        return json_response(request, 500, {
            "error": "internal server error",
            "code": "INTERNAL_ERROR",
            "details": {},
        })

    # ---------------------------------------------------------------- health

    @app.route("/health", methods=["GET"])
    async def health(self, request):
        # Probes may add query parameters (cache busters): they are ignored.
        database = await self.store.ping()
        scheduling = self.scheduler is None or self.scheduler.running
        healthy = database and scheduling
        return json_response(request, 200 if healthy else 503, {
            "status": "healthy" if healthy else "unhealthy",
            "timestamp": int(self.clock.seconds() * 1000),
            "services": {
                "database": "healthy" if database else "unhealthy",
                "scheduler": "running" if scheduling else "stopped",
            },
        })

    def _require_operator(self, request) -> None:
        principal = self.credentials.identify(header(request, "Authorization"))
        if principal is None:
            raise ApiError(401, "UNAUTHORIZED",
                           "missing or invalid credentials: send Authorization: Bearer <key>")
        if not principal.is_operator:
            raise ApiError(403, "FORBIDDEN", "a script token may not do this")

    # --------------------------------------------------------------- openapi

    @app.route(PREFIX + "/openapi.json", methods=["GET"])
    def openapi(self, request):
        """
        The API's OpenAPI document; readable without credentials, like
        C{/health}: it describes the API, not anything in it.
        """
        Query(request)
        return json_response(request, 200, openapi_document())

    # ----------------------------------------------------------------- flows

    @app.route(PREFIX + "/flows", methods=["GET"])
    def list_flows(self, request):
        self._require_operator(request)
        Query(request)
        return json_response(request, 200, {"flows": self.engine.flows.list_flows()})

    @app.route(PREFIX + "/flows/<flow:flow>", methods=["GET"])
    def get_flow(self, request, flow):
        self._require_operator(request)
        Query(request)
        info = self.engine.flows.describe(flow)
        if info is None:
            raise flow_not_found(flow)
        return json_response(request, 200, info)

    @app.route(PREFIX + "/flows/<flow:flow>/runs", methods=["POST"])
    async def trigger_flow(self, request, flow):
        await self._authorize(request)
        Query(request)
        body = read_json(request, empty={})
        if isinstance(body, dict) and "flowName" in body and body["flowName"] != flow:
            raise ApiError(400, "VALIDATION_ERROR",
                           "flowName in the body, when given, must be the flow of the URL",
                           field="flowName")
        return await self._trigger(request, flow, body)

    @app.route(PREFIX + "/runs", methods=["POST"])
    async def trigger_run(self, request):
        await self._authorize(request)
        Query(request)
        body = read_json(request, empty={})
        if not isinstance(body, dict):
            raise ApiError(400, "VALIDATION_ERROR", "body must be a JSON object")
        flow = body.get("flowName")
        if not isinstance(flow, str) or not flow:
            raise ApiError(400, "VALIDATION_ERROR", "flowName is required",
                           field="flowName")
        return await self._trigger(request, flow, body)

    async def _trigger(self, request, flow, body):
        model.check_run_limits(body)
        key = header(request, "Idempotency-Key")
        run, created = await self.engine.create_run(flow, body, key)
        return json_response(request, 201 if created else 200, render_run(run))

    # ------------------------------------------------------------------ runs

    @app.route(PREFIX + "/runs", methods=["GET"])
    async def list_runs(self, request):
        await self._authorize(request)
        q = Query(request, ("flowName", "status") + PAGINATION)
        flow = q.text("flowName")
        status = q.choice("status", model.RUN_STATUSES)
        sort_by = q.choice("sortBy", RUN_SORTS, "createdAt")
        order = q.choice("sortOrder", ORDERS, "desc")
        limit = q.integer("limit", 20, 1, 100)
        offset = q.integer("offset", 0, 0, 10**9)
        rows, total = await self.engine.list_runs(flow, status, sort_by, order, limit,
                                                  offset)
        return json_response(request, 200, {
            "runs": [render_run(r, full=False) for r in rows],
            "pagination": {"total": total, "limit": limit, "offset": offset},
        })

    @app.route(PREFIX + "/runs/<run_id>", methods=["GET"])
    async def get_run(self, request, run_id):
        await self._authorize(request, run_id)
        Query(request)
        return json_response(request, 200, render_run(await self.engine.get_run(run_id)))

    @app.route(PREFIX + "/runs/<run_id>", methods=["PATCH"])
    async def patch_run(self, request, run_id):
        await self._authorize(request, run_id)
        Query(request)
        body = read_json(request)
        model.check_run_limits(body)
        return json_response(request, 200,
                             render_run(await self.engine.patch_run(run_id, body)))

    @app.route(PREFIX + "/runs/<run_id>/abort", methods=["POST"])
    async def abort(self, request, run_id):
        await self._authorize(request)
        Query(request)
        return json_response(request, 200, await self.engine.abort(run_id))

    @app.route(PREFIX + "/runs/<run_id>/retry", methods=["POST"])
    async def retry(self, request, run_id):
        await self._authorize(request)
        Query(request)
        return self._control(request, await self.engine.retry_run(run_id))

    @app.route(PREFIX + "/runs/<run_id>/pause", methods=["POST"])
    async def pause(self, request, run_id):
        await self._authorize(request)
        Query(request)
        return self._control(request, await self.engine.pause(run_id))

    @app.route(PREFIX + "/runs/<run_id>/resume", methods=["POST"])
    async def resume(self, request, run_id):
        await self._authorize(request)
        Query(request)
        return self._control(request, await self.engine.resume(run_id))

    def _control(self, request, outcome: dict) -> bytes:
        return json_response(request, 200, {**outcome, "run": render_run(outcome["run"])})

    # ----------------------------------------------------------------- steps

    @app.route(PREFIX + "/runs/<run_id>/steps", methods=["POST"])
    async def schedule_stage(self, request, run_id):
        await self._authorize(request, run_id)
        Query(request)
        body = read_json(request)
        return json_response(request, 201, await self.engine.schedule_stage(run_id, body))

    @app.route(PREFIX + "/runs/<run_id>/steps", methods=["GET"])
    async def list_steps(self, request, run_id):
        await self._authorize(request, run_id)
        q = Query(request, ("stage", "status", "name") + PAGINATION)
        stage = q.text("stage")
        status = q.choice("status", model.STEP_STATUSES)
        name = q.text("name")
        sort_by = q.choice("sortBy", STEP_SORTS, "createdAt")
        order = q.choice("sortOrder", ORDERS, "asc")
        limit = q.integer("limit", 100, 1, 1000)
        offset = q.integer("offset", 0, 0, 10**9)
        rows, total = await self.engine.list_steps(run_id, stage, status, name, sort_by,
                                                   order, limit, offset)
        return json_response(request, 200, {
            "steps": [render_step(r, full=False) for r in rows],
            "pagination": {"total": total, "limit": limit, "offset": offset},
        })

    @app.route(PREFIX + "/runs/<run_id>/steps/<step_id>", methods=["GET"])
    async def get_step(self, request, run_id, step_id):
        await self._authorize(request, run_id)
        Query(request)
        return json_response(request, 200,
                             render_step(await self.engine.get_step(run_id, step_id)))

    @app.route(PREFIX + "/runs/<run_id>/steps/<step_id>/fields", methods=["POST"])
    async def post_fields(self, request, run_id, step_id):
        await self._authorize(request, run_id, fields_of=step_id)
        Query(request)
        body = read_json(request)
        return json_response(request, 200,
                             await self.engine.post_fields(run_id, step_id, body))

    @app.route(PREFIX + "/runs/<run_id>/steps/<step_id>/retry", methods=["POST"])
    async def retry_step(self, request, run_id, step_id):
        await self._authorize(request)
        Query(request)
        return self._control(request, await self.engine.retry_step(run_id, step_id))

    @app.route(PREFIX + "/runs/<run_id>/fields", methods=["GET"])
    async def get_fields(self, request, run_id):
        await self._authorize(request, run_id)
        q = Query(request, ("stepId", "fieldName"))
        fields = await self.engine.get_fields(run_id, q.id_list("stepId"),
                                              q.text("fieldName"))
        return json_response(request, 200, {"fields": fields})

    # ------------------------------------------------------------------ logs

    @app.route(PREFIX + "/runs/<run_id>/logs", methods=["POST"])
    async def add_log(self, request, run_id):
        await self._authorize(request, run_id)
        Query(request)
        body = read_json(request)
        model.check_log_limits(body)
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            body["message"] = secrets.mask_text(body["message"])
        return json_response(request, 201,
                             render_log(await self.engine.add_log(run_id, body)))

    @app.route(PREFIX + "/runs/<run_id>/logs", methods=["GET"])
    async def list_logs(self, request, run_id):
        await self._authorize(request, run_id)
        q = Query(request, ("entityType", "entityId", "level", "limit", "offset"))
        entity_type = q.choice("entityType", model.LOG_ENTITY_TYPES)
        entity_id = q.text("entityId")
        level = q.choice("level", model.LOG_LEVELS)
        limit = q.integer("limit", 100, 1, 1000)
        offset = q.integer("offset", 0, 0, 10**9)
        rows, total = await self.engine.list_logs(run_id, entity_type, entity_id, level,
                                                  limit, offset)
        return json_response(request, 200, {
            "logs": [render_log(r) for r in rows],
            "pagination": {"total": total, "limit": limit, "offset": offset},
        })
