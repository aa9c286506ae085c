"""
Fragments drawn once for every tab that asks for the same one at the same
state.

Every tab of a browser following the runs live hears the same events at
the same moment and asks for the same fragments again (twenty tabs on
C{/ui/runs}: twenty draws of one table, each a listing read and a
template).  A fragment is the same for all of them while nothing has
changed, and every change of state is an event (SPEC §7): so an answer is
shared by the requests of one session (its CSRF token is in the page) for
one URL while the event hub has read nothing newer.  That version tells
the state only while the hub follows the events (some stream is open), and
a fragment may show a time relative to now: entries are shared at most
L{MAX_AGE_S}, and not at all while no stream is open.  Requests arriving
while the first one draws wait for its answer.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Awaitable, Callable

from twisted.internet import defer

# How long one drawing answers the same request (seconds).
MAX_AGE_S = 1.0
# Fragments kept (sessions x URLs); the oldest go first.
MAX_ENTRIES = 128


class _Drawing:
    def __init__(self, at: float):
        self.at = at
        # (code, headers, body) once drawn; None while drawing or if the
        # first request's answer was not one to share.
        self.answer: tuple[int, list, bytes] | None = None
        self.done = False
        self.waiting: list[defer.Deferred] = []


class SharedRenders:
    """
    C{draw(request)}'s answer shared by equal requests: see the module.
    C{hub} is the server's L{maxq.streams.EventHub} (None: nothing shared).
    """

    def __init__(self, hub, clock, max_age_s: float = MAX_AGE_S,
                 max_entries: int = MAX_ENTRIES):
        self.hub = hub
        self.clock = clock
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._drawings: OrderedDict[tuple, _Drawing] = OrderedDict()
        # How many requests were answered by another's drawing (tests).
        self.shared = 0

    def _key(self, nonce: str, request) -> tuple | None:
        hub = self.hub
        if hub is None or not hub.subscriptions:
            return None
        return (nonce, request.method, request.uri, hub.last_id)

    async def answer(self, request, nonce: str,
                     draw: Callable[[], Awaitable[bytes]]) -> bytes:
        key = self._key(nonce, request)
        if key is None:
            return await draw()
        now = self.clock.seconds()
        drawing = self._drawings.get(key)
        if drawing is not None and now - drawing.at <= self.max_age_s:
            if not drawing.done:
                waiter = defer.Deferred()
                drawing.waiting.append(waiter)
                await waiter
            if drawing.answer is not None:
                self.shared += 1
                return _replay(request, drawing.answer)
            return await draw()
        drawing = _Drawing(now)
        self._drawings[key] = drawing
        self._drawings.move_to_end(key)
        while len(self._drawings) > self.max_entries:
            self._drawings.popitem(last=False)
        try:
            body = await draw()
            if request.code == 200:
                drawing.answer = (200, _headers(request), body)
            return body
        finally:
            drawing.done = True
            waiting, drawing.waiting = drawing.waiting, []
            for waiter in waiting:
                waiter.callback(None)


def _headers(request) -> list:
    # The session's own cookie is never handed to another request.
    return [(name, values) for name, values in request.responseHeaders.getAllRawHeaders()
            if name.lower() != b"set-cookie"]


def _replay(request, answer: tuple[int, list, bytes]) -> bytes:
    code, headers, body = answer
    request.setResponseCode(code)
    for name, values in headers:
        request.responseHeaders.setRawHeaders(name, values)
    return body
