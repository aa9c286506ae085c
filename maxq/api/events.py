"""
The routes of SPEC §7's events and search: C{GET /events} and
C{GET /runs/{runId}/events} (JSON pages, or Server-Sent Events with
C{Accept: text/event-stream}), and C{GET /search}.

Where a stream starts: after C{Last-Event-ID}, else after C{after}, else
from the beginning of what is kept for a run's stream and from now for
C{/events} (a dashboard wants what happens next, a run's page its
history).  A cursor older than the retention starts with a C{reset} event
(JSON: C{"reset": true}).  A script token (C{MAXQ_TOKEN}) sees only its
own run's events.
"""

from __future__ import annotations

import re

from maxq.api.base import PREFIX, app
from maxq.api.http import Query, header, json_response
from maxq.api.sse import REPLAY_PAGE, EventStream
from maxq.errors import ApiError, validation_error

EVENT_TYPES = ("run", "stage", "step", "fields", "log", "schedule", "notification")
MAX_ID = 2 ** 62
WORDS = re.compile(r"[^\W_]+")
SNIPPET = 80


def render_event(row: dict) -> dict:
    """
    An event as the API shows it (SPEC §7); absent parts are left out.
    """
    event = {"id": row["id"], "type": row["type"], "at": row["at"],
             "runId": row["run_id"], "flowName": row["flow_name"]}
    for key, column in (("stage", "stage"), ("stepId", "step_id"),
                        ("status", "status"), ("previousStatus", "previous_status")):
        if row.get(column) is not None:
            event[key] = row[column]
    event["data"] = row.get("data") or {}
    return event


def snippet(text: str, words: list[str]) -> str:
    lower = text.lower()
    hits = [i for i in (lower.find(w) for w in words) if i >= 0]
    at = min(hits) if hits else 0
    start = max(at - SNIPPET, 0)
    end = min(at + SNIPPET, len(text))
    return (("…" if start else "") + text[start:end].replace("\n", " ").strip()
            + ("…" if end < len(text) else ""))


class EventRoutes:
    """
    Mixin of L{maxq.api.app.Api}; C{self.events} is the server's
    L{maxq.streams.EventHub} (given to the constructor).
    """

    events = None

    def _event_scope(self, request, run_id: str | None) -> str | None:
        """
        The run a caller may read events of: anything for the operator
        (C{run_id} as asked), only its own run for a script token.
        """
        principal = self.credentials.identify(header(request, "Authorization"))
        if principal is None:
            raise ApiError(401, "UNAUTHORIZED",
                           "missing or invalid credentials: send Authorization: Bearer <key>")
        if principal.is_operator:
            return run_id
        if run_id is not None and run_id != principal.run_id:
            raise ApiError(403, "FORBIDDEN", "a script token may read only its own run")
        return principal.run_id

    @app.route(PREFIX + "/events", methods=["GET"])
    async def list_events(self, request):
        query = Query(request, ("after", "limit", "flowName", "runId", "type"))
        run_id = self._event_scope(request, query.text("runId"))
        return await self._events(request, query, run_id, live_from_now=True)

    @app.route(PREFIX + "/runs/<run_id>/events", methods=["GET"])
    async def list_run_events(self, request, run_id):
        query = Query(request, ("after", "limit", "flowName", "type"))
        run_id = self._event_scope(request, run_id)
        await self.engine.get_run(run_id)
        return await self._events(request, query, run_id, live_from_now=False)

    async def _events(self, request, query, run_id, live_from_now: bool):
        flow_name = query.text("flowName")
        types = query.id_list("type")
        if types:
            unknown = sorted(set(types) - set(EVENT_TYPES))
            if unknown:
                raise validation_error("type must be a comma list of "
                                       + ", ".join(EVENT_TYPES), parameter="type",
                                       value=",".join(unknown))
        after = query.integer("after", -1, 0, MAX_ID)
        last_event_id = header(request, "Last-Event-ID")
        if last_event_id is not None:
            if not last_event_id.strip().isdigit() or int(last_event_id) > MAX_ID:
                raise validation_error("Last-Event-ID must be an event id",
                                       value=last_event_id)
            after = int(last_event_id.strip())
        streaming = "text/event-stream" in (header(request, "Accept") or "")
        limit = query.integer("limit", 100, 1, 1000)
        _last, pruned = await self.store.read(lambda tx: tx.event_bounds())
        # Never past the settled bound: a lower id may still be committing.
        settled = await self.events.settle()
        if after < 0:
            after = settled if streaming and live_from_now else 0
        reset = after < pruned

        async def read_page(cursor, count):
            upto = await self.events.settle()
            return await self.store.read(
                lambda tx: tx.list_events(cursor, run_id, flow_name, types, count, upto))

        if not streaming:
            rows = await read_page(after, limit)
            body = {"events": [render_event(r) for r in rows],
                    "lastId": rows[-1]["id"] if rows else max(after, 0)}
            if reset:
                body["reset"] = True
            return json_response(request, 200, body)

        def accepts(row):
            return ((run_id is None or row["run_id"] == run_id)
                    and (flow_name is None or row["flow_name"] == flow_name)
                    and (not types or row["type"] in types))

        key = (run_id, flow_name, tuple(sorted(types)) if types else None)
        stream = EventStream(
            request, self.events, self.clock,
            lambda cursor: read_page(cursor, REPLAY_PAGE),
            None if key == (None, None, None) else accepts, render_event,
            after, {"reason": "retention", "oldestKept": pruned + 1} if reset else None,
            key=key)
        return await stream.start()

    # ---------------------------------------------------------------- search

    @app.route(PREFIX + "/search", methods=["GET"])
    async def search(self, request):
        query = Query(request, ("q", "flowName", "runId", "limit"))
        run_id = self._event_scope(request, query.text("runId"))
        text = query.text("q") or ""
        words = [w.lower() for w in WORDS.findall(text)][:16]
        if not words:
            raise validation_error("q must contain at least one word", parameter="q")
        flow_name = query.text("flowName")
        limit = query.integer("limit", 20, 1, 100)

        async def find(tx):
            return (await tx.search_logs(words, run_id, flow_name, limit),
                    await tx.search_output(words, run_id, flow_name, limit))

        logs, output = await self.store.read(find)
        results = [
            {"kind": "log", "runId": r["run_id"], "flowName": r["flow_name"],
             "stepId": r["entity_id"] if r["entity_type"] == "step" else None,
             "at": r["created_at"], "logId": r["id"], "level": r["level"],
             "entityType": r["entity_type"], "entityId": r["entity_id"],
             "snippet": snippet(r["message"], words)}
            for r in logs
        ] + [
            {"kind": "output", "runId": r["run_id"], "flowName": r["flow_name"],
             "stepId": r["step_id"] or None, "at": r["created_at"],
             "stream": r["stream"], "offset": r["offset"],
             "snippet": snippet(r["data"], words)}
            for r in output
        ]
        results.sort(key=lambda r: r["at"], reverse=True)
        return json_response(request, 200, {"results": results[:limit], "query": words})
