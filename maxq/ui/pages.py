"""
The web UI's pages and the fragments their live parts fetch again when an
event says something changed (a mixin of L{maxq.api.app.Api}).  Reads go
to the engine in-process; nothing here writes.
"""

from __future__ import annotations

from urllib.parse import urlencode

from maxq import __version__, model
from maxq.api.base import app, refusal_status
from maxq.errors import NotFound, Refusal
from maxq.ui import layout as dag
from maxq.ui import views
from maxq.ui.base import UI, UiBase

RUNS_PER_PAGE = 25
LOGS_SHOWN = 200
STEP_PAGE = 1000
HISTORY_EVENTS = 100_000
RUN_PARTS = frozenset({"header", "graph", "timeline", "stages"})


class UiPages(UiBase):

    def _ui_now(self) -> int:
        return int(self.clock.seconds() * 1000)

    def _ui_page(self, request, code, name, nonce, /, **context) -> bytes:
        now = self._ui_now()
        return self._ui_html(request, code, name, nonce, version=__version__,
                          elapsed=lambda a, b: views.elapsed(a, b, now), **context)

    def _ui_refused(self, request, nonce, error: Refusal) -> bytes:
        status = self._ui_refusal_status(error)
        return self._ui_page(request, status, "error.html", nonce, title="Not available",
                          code=error.code, message=error.message)

    def _ui_refusal_status(self, error: Refusal) -> int:
        return getattr(error, "status", None) or refusal_status(error)

    async def _ui_live(self, **filters) -> str:
        """
        The page's event stream (SPEC §7), starting after the last event
        committed before the page's data is read: what changes between
        drawing the page and the stream connecting is replayed, not lost.
        Call it before reading the page's data.
        """
        # The settled bound: no event at or below it can still appear.  A
        # server without an event hub has no stream.
        after = await self.events.settle() if self.events is not None else None
        query = {k: v for k, v in filters.items() if v}
        if after is not None:
            query["after"] = str(after)
        return "/api/v1/events" + ("?" + urlencode(query) if query else "")

    async def _ui_list(self, kind: str, *run, limit: int, offset: int = 0,
                       sort_order: str = "desc", **filters):
        """
        One page of the engine's runs, steps or logs, C{(rows, total)},
        newest first unless told (logs are always newest first).
        """
        listing = getattr(self.engine, "list_" + kind)
        return await listing(*run, model.Page(limit, offset, "createdAt", sort_order),
                             **filters)

    async def _ui_all_steps(self, run_id: str) -> list[dict]:
        steps: list[dict] = []
        while True:
            rows, total = await self._ui_list("steps", run_id, limit=STEP_PAGE,
                                              offset=len(steps), sort_order="asc")
            steps.extend(rows)
            if not rows or len(steps) >= total:
                return steps

    # ------------------------------------------------------------------ runs

    @app.route(UI + "/", methods=["GET"])
    async def ui_home(self, request):
        return await self.ui_runs(request)

    def _ui_runs_query(self, request) -> tuple[str | None, str | None, int]:
        flow = self._ui_arg(request, "flow") or None
        status = self._ui_arg(request, "status") or None
        if status not in model.RUN_STATUSES:
            status = None
        raw = self._ui_arg(request, "offset") or "0"
        offset = int(raw) if raw.isdigit() and len(raw) < 10 else 0
        return flow, status, offset

    async def _ui_runs_context(self, flow, status, offset) -> dict:
        rows, total = await self._ui_list("runs", limit=RUNS_PER_PAGE, offset=offset,
                                          flow_name=flow, status=status)
        base = {k: v for k, v in (("flow", flow), ("status", status)) if v}

        def page_url(to: int) -> str:
            return UI + "/runs?" + urlencode({**base, "offset": to})

        return {
            "runs": rows, "flow": flow, "status": status,
            "page": views.page_links(total, RUNS_PER_PAGE, offset), "page_url": page_url,
            "table_url": UI + "/fragments/runs?" + urlencode({**base, "offset": offset}),
        }

    @app.route(UI + "/runs", methods=["GET"])
    async def ui_runs(self, request):
        nonce = self._ui_page_session(request)
        if nonce is None:
            return self._ui_login_needed(request)
        flow, status, offset = self._ui_runs_query(request)
        live = await self._ui_live(type="run")
        context = await self._ui_runs_context(flow, status, offset)
        flows = [f["name"] for f in self.engine.flows.list_flows()]
        return self._ui_page(request, 200, "runs.html", nonce, nav="runs", flows=flows,
                             statuses=model.RUN_STATUSES, live=live, **context)

    @app.route(UI + "/fragments/runs", methods=["GET"])
    async def ui_runs_table(self, request):
        nonce = self._ui_page_session(request)
        if nonce is None:
            return self._ui_login_needed(request)
        async def draw():
            context = await self._ui_runs_context(*self._ui_runs_query(request))
            return self._ui_page(request, 200, "runs_table.html", nonce, **context)

        return await self.ui_renders.answer(request, nonce, draw)

    @app.route(UI + "/fragments/runs/<run_id>/row", methods=["GET"])
    async def ui_run_row(self, request, run_id):
        nonce = self._ui_page_session(request)
        if nonce is None:
            return self._ui_login_needed(request)
        async def draw():
            try:
                run = await self.engine.get_run(run_id)
            except Refusal as e:
                return self._ui_refused(request, nonce, e)
            return self._ui_page(request, 200, "run_row.html", nonce, run=run)

        return await self.ui_renders.answer(request, nonce, draw)

    # ----------------------------------------------------------------- flows

    @app.route(UI + "/flows", methods=["GET"])
    async def ui_flows(self, request):
        nonce = self._ui_page_session(request)
        if nonce is None:
            return self._ui_login_needed(request)
        flows = []
        for info in self.engine.flows.list_flows():
            rows, _ = await self._ui_list("runs", limit=1, flow_name=info["name"])
            flows.append({**info, "last_run": rows[0] if rows else None})
        return self._ui_page(request, 200, "flows.html", nonce, nav="flows", flows=flows)

    # ------------------------------------------------------------------- run

    def _ui_expanded(self, request) -> frozenset[str]:
        values = (request.args or {}).get(b"expand") or []
        return frozenset(v.decode("utf-8", "replace") for v in values)

    async def _ui_run_context(self, request, run_id: str,
                              parts: frozenset[str] = RUN_PARTS) -> dict:
        """
        What the run page's C{parts} show, and only that: a fragment
        fetched for a live update reads no more than it draws.
        """
        run = await self.engine.get_run(run_id)
        context = {"run": run, "actions": views.allowed_actions(run),
                   "stages": run.get("stages") or []}
        if parts == {"header"}:
            return context
        steps = await self._ui_all_steps(run_id)
        context["counts"] = views.stage_counts(steps)
        if parts & {"graph", "nodes"}:
            expanded = self._ui_expanded(request)
            context.update(graph=dag.layout(steps, run.get("stages"), expanded),
                           expanded=expanded,
                           names={s["id"]: s["name"] for s in steps})
        if "timeline" in parts:
            context["timeline"] = views.timeline(run, steps, self._ui_now(),
                                                 await self._ui_run_attempts(run_id))
        return context

    async def _ui_step_events(self, run_id: str, step_id: str | None = None) -> list[dict]:
        """
        The run's step events (of one step, when given), oldest first, from
        the event history (SPEC §7) when the server keeps one, else none;
        at most C{HISTORY_EVENTS} are read.
        """
        async def changes(tx):
            page = getattr(tx, "list_events", None)  # the event store's primitive
            if page is None:
                return []
            found, after = [], 0
            for _ in range(HISTORY_EVENTS // 1000):
                rows = await page(after, run_id, None, ["step"], 1000)
                found += [r for r in rows if step_id is None or r.get("step_id") == step_id]
                if len(rows) < 1000:
                    break
                after = rows[-1]["id"]
            return found

        return await self.store.read(changes)

    async def _ui_run_attempts(self, run_id: str) -> dict[str, list[dict]] | None:
        rows = await self._ui_step_events(run_id)
        return views.attempts_from_events(rows) if rows else None

    async def _ui_logs(self, run_id: str) -> dict:
        rows, total = await self._ui_list("logs", run_id, limit=LOGS_SHOWN)
        return {"logs": rows, "logs_total": total}

    @app.route(UI + "/runs/<run_id>", methods=["GET"])
    async def ui_run(self, request, run_id):
        nonce = self._ui_page_session(request)
        if nonce is None:
            return self._ui_login_needed(request)
        live = await self._ui_live(runId=run_id)
        try:
            context = await self._ui_run_context(request, run_id)
            context.update(await self._ui_logs(run_id))
        except Refusal as e:
            return self._ui_refused(request, nonce, e)
        return self._ui_page(request, 200, "run.html", nonce, nav="runs", live=live,
                             **context)

    @app.route(UI + "/runs/<run_id>/fragments/<part>", methods=["GET"])
    async def ui_run_part(self, request, run_id, part):
        """
        One part of the run page, drawn again: C{header}, C{graph},
        C{timeline}, C{stages}, C{logs}, or C{nodes} (the graph's nodes of
        the steps in C{ids}, as an SVG document the page's script merges).
        """
        nonce = self._ui_page_session(request)
        if nonce is None:
            return self._ui_login_needed(request)
        templates = {"header": "run_header.html", "graph": "run_graph.html",
                     "timeline": "run_timeline.html", "stages": "run_stages.html",
                     "logs": "run_logs.html", "nodes": "graph_nodes.html"}
        if part not in templates:
            return self._ui_refused(request, nonce, NotFound("NOT_FOUND", "no such fragment"))
        return await self.ui_renders.answer(
            request, nonce, lambda: self._ui_draw_run_part(request, nonce, run_id, part,
                                                           templates[part]))

    async def _ui_draw_run_part(self, request, nonce: str, run_id: str, part: str,
                                name: str) -> bytes:
        try:
            if part == "logs":
                await self.engine.get_run(run_id)
                context = {"run": {"id": run_id}, **await self._ui_logs(run_id)}
            else:
                context = await self._ui_run_context(request, run_id, frozenset({part}))
        except Refusal as e:
            return self._ui_refused(request, nonce, e)
        if part == "nodes":
            wanted = set((self._ui_arg(request, "ids") or "").split(","))
            context["nodes"] = [n for n in context["graph"].nodes
                                if n.step_id in wanted or wanted & set(n.members)]
            body = self._ui_page(request, 200, name, nonce, **context)
            request.setHeader(b"Content-Type", b"image/svg+xml; charset=utf-8")
            return body
        return self._ui_page(request, 200, name, nonce, **context)

    # ------------------------------------------------------------------ step

    async def _ui_step_context(self, run_id: str, step_id: str) -> dict:
        run = await self.engine.get_run(run_id)
        step = await self.engine.get_step(run_id, step_id)
        started = step["status"] != "pending" or step.get("started_at") is not None
        return {
            "run": run, "step": step, "env": views.masked_env(step.get("env")),
            "attempts": step["retry_count"] + (1 if started else 0),
            "can_retry": views.can_retry_step(run, step),
            "history": await self._ui_attempt_history(run_id, step_id),
        }

    async def _ui_attempt_history(self, run_id: str, step_id: str) -> list[dict]:
        """
        The step's status changes, oldest first, from the event history
        (SPEC §7: a step event carries C{attempt}, C{exitCode}, C{error});
        empty on a server without one (the page then shows the count).
        At most C{HISTORY_EVENTS} step events of the run are read.
        """
        rows = await self._ui_step_events(run_id, step_id)
        history = []
        for row in rows:
            data = row.get("data") or {}
            history.append({"status": row.get("status"), "at": row.get("at"),
                            "attempt": data.get("attempt"),
                            "exitCode": data.get("exitCode"),
                            "error": data.get("error")})
        return history

    @app.route(UI + "/runs/<run_id>/steps/<step_id>", methods=["GET"])
    async def ui_step(self, request, run_id, step_id):
        nonce = self._ui_page_session(request)
        if nonce is None:
            return self._ui_login_needed(request)
        live = await self._ui_live(runId=run_id, type="run,step,fields")
        try:
            context = await self._ui_step_context(run_id, step_id)
        except Refusal as e:
            return self._ui_refused(request, nonce, e)
        return self._ui_page(request, 200, "step.html", nonce, nav="runs", live=live,
                          **context)

    @app.route(UI + "/runs/<run_id>/steps/<step_id>/fragments/detail", methods=["GET"])
    async def ui_step_detail(self, request, run_id, step_id):
        nonce = self._ui_page_session(request)
        if nonce is None:
            return self._ui_login_needed(request)
        try:
            context = await self._ui_step_context(run_id, step_id)
        except Refusal as e:
            return self._ui_refused(request, nonce, e)
        return self._ui_page(request, 200, "step_detail.html", nonce, **context)

    # ------------------------------------------------------ schedules, pools

    @app.route(UI + "/schedules", methods=["GET"])
    def ui_schedules(self, request):
        nonce = self._ui_page_session(request)
        if nonce is None:
            return self._ui_login_needed(request)
        return self._ui_page(request, 200, "admin.html", nonce, nav="schedules",
                          kind="schedules", heading="Schedules",
                          source="/api/v1/schedules")

    @app.route(UI + "/pools", methods=["GET"])
    def ui_pools(self, request):
        nonce = self._ui_page_session(request)
        if nonce is None:
            return self._ui_login_needed(request)
        return self._ui_page(request, 200, "admin.html", nonce, nav="pools", kind="pools",
                          heading="Pools", source="/api/v1/pools")
