"""
The schedule routes (SPEC §5): schedules, their pause and resume, their
log, and backfills.  A mixin of L{maxq.api.app.Api}.
"""

from __future__ import annotations

from maxq.api.base import PREFIX, app
from maxq.api.http import Query, json_response, read_json

LOG_LIMIT = 1000


def render_entry(entry, now_ms: int) -> dict:
    """
    One flow's schedule as C{GET /schedules} shows it.
    """
    flow_name, spec, row = entry
    paused = bool(row["paused"]) if row is not None else spec.paused
    after = max(now_ms, row["watermark"]) if row is not None else now_ms
    return {
        "flowName": flow_name,
        "expressions": spec.texts,
        "timezone": spec.timezone,
        "paused": paused,
        "nextAt": None if paused else spec.next_after(after),
        "lastAt": row["last_at"] if row is not None else None,
        "lastRunId": row["last_run_id"] if row is not None else None,
        "catchup": spec.catchup,
        "catchupWindowMs": spec.catchup_window_ms,
        "overlap": spec.overlap,
        "input": spec.input,
        "description": spec.description(),
    }


def render_log_entry(row: dict) -> dict:
    return {
        "id": row["id"], "flowName": row["flow_name"], "action": row["action"],
        "scheduledAt": row["scheduled_at"], "reason": row["reason"],
        "runId": row["run_id"], "details": row["details"] or {},
        "createdAt": row["created_at"],
    }


def render_backfill(view: dict) -> dict:
    return {
        "id": view["id"], "flowName": view["flow_name"], "from": view["from_at"],
        "to": view["to_at"], "status": view["status"], "reprocess": view["reprocess"],
        "maxActiveRuns": view["max_active"], "input": view["input"],
        "createdAt": view["created_at"], "completedAt": view["completed_at"],
        "runs": [{"id": r["id"], "scheduledAt": r["scheduled_at"], "status": r["status"]}
                 for r in view["runs"]],
        "skipped": view["skipped"],
        "counts": view["counts"],
    }


class ScheduleRoutes:
    """
    Routes of schedules and backfills (needs L{maxq.api.base.ApiBase}).
    """

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    @app.route(PREFIX + "/schedules", methods=["GET"])
    async def list_schedules(self, request):
        self._require_operator(request)
        Query(request)
        entries = await self.engine.schedule_entries()
        now = self._now_ms()
        return json_response(request, 200,
                             {"schedules": [render_entry(e, now) for e in entries]})

    @app.route(PREFIX + "/flows/<flow:flow>/schedule", methods=["GET"])
    async def get_schedule(self, request, flow):
        self._require_operator(request)
        Query(request)
        entry = await self.engine.schedule_entry(flow)
        return json_response(request, 200, render_entry(entry, self._now_ms()))

    @app.route(PREFIX + "/flows/<flow:flow>/schedule/pause", methods=["POST"])
    async def pause_schedule(self, request, flow):
        return await self._set_paused(request, flow, True)

    @app.route(PREFIX + "/flows/<flow:flow>/schedule/resume", methods=["POST"])
    async def resume_schedule(self, request, flow):
        return await self._set_paused(request, flow, False)

    async def _set_paused(self, request, flow, paused):
        self._require_operator(request)
        Query(request)
        read_json(request, empty={})
        entry = await self.engine.pause_schedule(flow, paused)
        return json_response(request, 200, render_entry(entry, self._now_ms()))

    @app.route(PREFIX + "/flows/<flow:flow>/schedule/log", methods=["GET"])
    async def schedule_log(self, request, flow):
        self._require_operator(request)
        query = Query(request, ("limit",))
        limit = query.integer("limit", 100, 1, LOG_LIMIT)
        rows = await self.engine.schedule_log(flow, limit)
        return json_response(request, 200, {"entries": [render_log_entry(r) for r in rows]})

    @app.route(PREFIX + "/flows/<flow:flow>/backfills", methods=["POST"])
    async def create_backfill(self, request, flow):
        self._require_operator(request)
        Query(request)
        body = read_json(request)
        answer = await self.engine.create_backfill(flow, body)
        return json_response(request, 200 if answer["id"] is None else 201, answer)

    @app.route(PREFIX + "/flows/<flow:flow>/backfills", methods=["GET"])
    async def list_backfills(self, request, flow):
        self._require_operator(request)
        Query(request)
        views = await self.engine.list_backfills(flow)
        return json_response(request, 200, {"backfills": [render_backfill(v) for v in views]})

    @app.route(PREFIX + "/backfills/<backfill_id>", methods=["GET"])
    async def get_backfill(self, request, backfill_id):
        self._require_operator(request)
        Query(request)
        return json_response(request, 200,
                             render_backfill(await self.engine.get_backfill(backfill_id)))

    @app.route(PREFIX + "/backfills/<backfill_id>/cancel", methods=["POST"])
    async def cancel_backfill(self, request, backfill_id):
        self._require_operator(request)
        Query(request)
        read_json(request, empty={})
        return json_response(request, 200,
                             render_backfill(await self.engine.cancel_backfill(backfill_id)))
