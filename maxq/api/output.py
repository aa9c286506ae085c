"""
The output routes of SPEC §7: a step attempt's stored stdout or stderr,
and flow.sh's (its calls one after the other), by byte ranges.

C{data} is text: the stored form is UTF-8 (masked; bytes that were not
UTF-8 became U+FFFD), and C{offset}, C{nextOffset} and C{size} count its
bytes.  A page never ends inside a character: C{nextOffset} may stop a
few bytes short of C{offset + limit}, so that reading on from it
reassembles the exact bytes.
"""

from __future__ import annotations

from maxq.api.base import PREFIX, app
from maxq.api.http import Query, json_response
from maxq.errors import validation_error
from maxq.model import RUN_FINISHED, STEP_FINISHED

DEFAULT_LIMIT = 1024 * 1024
MAX_LIMIT = 16 * 1024 * 1024
MAX_OFFSET = 2 ** 53


def _char_boundary(data: bytes) -> int:
    """
    The length of C{data} without a trailing incomplete UTF-8 character.
    """
    end = len(data)
    back = 0
    while back < 4 and end - back > 0 and data[end - back - 1] & 0xC0 == 0x80:
        back += 1
    if end - back > 0:
        lead = data[end - back - 1]
        need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else \
            4 if lead >> 3 == 0b11110 else 1
        if need > back + 1:
            return end - back - 1
    return end


class OutputRoutes:
    """
    Mixin of L{maxq.api.app.Api}.
    """

    @app.route(PREFIX + "/runs/<run_id>/steps/<step_id>/output", methods=["GET"])
    async def step_output(self, request, run_id, step_id):
        await self._authorize_read(request, run_id)
        query = Query(request, ("stream", "attempt", "offset", "limit"))
        stream = query.choice("stream", ("stdout", "stderr"), "stdout")
        attempt = query.integer("attempt", 0, 1, 1_000_000)
        offset = query.integer("offset", 0, 0, MAX_OFFSET)
        limit = query.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        step = await self.engine.get_step(run_id, step_id)
        rows = await self.store.read(lambda tx: tx.list_outputs(run_id, step_id, stream))
        if attempt:
            rows = [r for r in rows if r["attempt"] == attempt]
        parts = rows[-1:]
        finished = step["status"] in STEP_FINISHED
        body = await self._page(run_id, step_id, stream, parts, offset, limit,
                                finished)
        body["attempt"] = parts[0]["attempt"] if parts else (attempt or None)
        return json_response(request, 200, body)

    @app.route(PREFIX + "/runs/<run_id>/output", methods=["GET"])
    async def flow_output(self, request, run_id):
        await self._authorize_read(request, run_id)
        query = Query(request, ("stream", "offset", "limit"))
        stream = query.choice("stream", ("stdout", "stderr"), "stdout")
        offset = query.integer("offset", 0, 0, MAX_OFFSET)
        limit = query.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        run = await self.engine.get_run(run_id)
        rows = await self.store.read(lambda tx: tx.list_outputs(run_id, "", stream))
        body = await self._page(run_id, "", stream, rows, offset, limit,
                                run["status"] in RUN_FINISHED)
        return json_response(request, 200, body)

    async def _authorize_read(self, request, run_id):
        if hasattr(self, "_event_scope"):
            self._event_scope(request, run_id)
        else:
            await self._authorize(request, run_id)

    async def _page(self, run_id, step_id, stream, parts, offset, limit, finished):
        """
        Bytes [offset, offset + limit) of C{parts} (stored streams, read one
        after the other).
        """
        size = sum(p["size"] for p in parts)
        if offset > size:
            raise validation_error(f"offset is past the end ({size} bytes)",
                                   parameter="offset", size=size)
        end = min(offset + limit, size)
        wanted = []
        base = 0
        for part in parts:
            lo, hi = max(offset, base), min(end, base + part["size"])
            if lo < hi:
                wanted.append((part["claim_no"], lo - base, hi - base))
            base += part["size"]

        async def read(tx):
            pieces = []
            for claim_no, lo, hi in wanted:
                chunks = await tx.read_output(run_id, step_id, stream, claim_no, lo, hi)
                data = b"".join(d.encode("utf-8") for _, d in chunks)
                first = chunks[0][0] if chunks else lo
                pieces.append(data[lo - first:hi - first])
            return b"".join(pieces)

        data = await self.store.read(read) if wanted else b""
        if offset + len(data) < size and _char_boundary(data) > 0:
            data = data[:_char_boundary(data)]
        complete = finished and all(p["complete"] for p in parts)
        return {"data": data.decode("utf-8", errors="replace"), "offset": offset,
                "nextOffset": offset + len(data), "size": size, "stream": stream,
                "complete": complete,
                "truncated": any(bool(p["truncated"]) for p in parts)}
