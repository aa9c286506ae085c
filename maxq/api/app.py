"""
The HTTP API (SPEC §3): the L{Api} class, made of route groups that
translate requests into engine operations and engine results into JSON.
Shared ground (the Klein app, authorization, errors, health) is in
L{maxq.api.base}; rendering of rows in L{maxq.api.render}.  No SQL and no
processes here.
"""

from __future__ import annotations

from maxq import model, secrets
from maxq.api.base import (
    ORDERS, PAGINATION, PREFIX, ApiBase, app, openapi_document, refusal_status,
)
from maxq.api.events import EventRoutes
from maxq.api.http import Query, header, json_response, read_json
from maxq.api.notifications import NotificationRoutes
from maxq.api.operations import OperationsRoutes
from maxq.api.pools import PoolRoutes
from maxq.api.output import OutputRoutes
from maxq.api.render import render_log, render_run, render_step
from maxq.api.schedules import ScheduleRoutes
from maxq.errors import ApiError, flow_not_found
from maxq.ui import UiRoutes

__all__ = ["Api", "PREFIX", "openapi_document", "refusal_status",
           "render_log", "render_run", "render_step"]

RUN_SORTS = ("createdAt", "startedAt", "completedAt")
STEP_SORTS = ("createdAt", "startedAt", "completedAt", "id", "name")


class Api(UiRoutes, EventRoutes, OutputRoutes, ScheduleRoutes, PoolRoutes,
          OperationsRoutes, NotificationRoutes, ApiBase):
    """
    The routes.  C{app.resource()} of an instance is what the server
    serves.  Route groups of later capabilities are mixins listed before
    L{ApiBase}.
    """

    def __init__(self, engine, store, clock, scheduler=None, credentials=None,
                 events=None, metrics=None, flows=None, config=None, dispatcher=None):
        """
        What the route groups serve: C{events} (the L{maxq.streams.EventHub})
        the event streams, C{metrics} with C{flows} and C{config} the
        C{/metrics} and C{/health} routes, C{dispatcher} (woken by a
        notification's retry) the notification routes; left out, those
        routes have nothing to serve.
        """
        super().__init__(engine, store, clock, scheduler, credentials)
        self.events = events
        self.dispatcher = dispatcher
        if metrics is not None:
            self.attach_operations(metrics, flows, config)

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
        rows, total = await self.engine.list_runs(
            model.Page(limit, offset, sort_by, order), flow_name=flow, status=status)
        return json_response(request, 200, {
            "runs": [render_run(r, full=False) for r in rows],
            # Past 1,000 matching runs the total is estimated (maxq.store.listing).
            "pagination": {"total": total, "limit": limit, "offset": offset,
                           "estimated": getattr(total, "estimated", False)},
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
        rows, total = await self.engine.list_steps(
            run_id, model.Page(limit, offset, sort_by, order),
            stage=stage, status=status, name=name)
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
        rows, total = await self.engine.list_logs(
            run_id, model.Page(limit, offset),
            entity_type=entity_type, entity_id=entity_id, level=level)
        return json_response(request, 200, {
            "logs": [render_log(r) for r in rows],
            "pagination": {"total": total, "limit": limit, "offset": offset},
        })
