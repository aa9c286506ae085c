"""
L{EventStream}: one Server-Sent Events response (SPEC §7): C{retry:},
then a C{reset} event when the client resumes from before retention, the
events after its cursor replayed from the database in order, then live
events from the hub, and a comment line every 15 s.

The route returns L{EventStream.start}'s Deferred, which never fires:
Klein cancels it when the client goes away, and the canceller unsubscribes
and stops the heartbeat.  The stream registers as the request's push
producer; while the connection is paused (the client reads slowly) frames
wait in a backlog, and past L{MAX_BACKLOG} bytes the connection is cut
(the client reconnects with C{Last-Event-ID} and loses nothing).
"""

from __future__ import annotations

import json

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

HEARTBEAT_S = 15.0
RETRY_MS = 2000
MAX_BACKLOG = 1024 * 1024
REPLAY_PAGE = 500


# Where a row keeps its encoded frame: the hub hands the same rows to every
# stream, so each event is rendered and encoded once, not once per client.
_ENCODED = "_sse_frame"


def frame(event: dict) -> bytes:
    body = json.dumps(event, separators=(",", ":"))
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {body}\n\n".encode()


def encoded(row: dict, render) -> bytes:
    """
    The frame of C{row} as C{render} shows it, encoded on first use.
    """
    kept = row.get(_ENCODED)
    if kept is not None and kept[0] is render:
        return kept[1]
    data = frame(render(row))
    row[_ENCODED] = (render, data)
    return data


@implementer(IPushProducer)
class EventStream:
    log = Logger()

    def __init__(self, request, hub, clock, read_page, accepts, render, cursor: int,
                 reset: dict | None, max_backlog: int = MAX_BACKLOG, key=None):
        self.request = request
        self.hub = hub
        self.clock = clock
        # read_page(after) -> Deferred of the next events (rows) after a cursor.
        self.read_page = read_page
        # Which events it sends (None: all), and that filter as a hashable
        # key: streams with equal keys share the hub's batches.
        self.accepts = accepts
        self.key = key
        self.render = render
        self.cursor = cursor
        self.reset = reset
        self.max_backlog = max_backlog
        self.paused = False
        self.backlog: list[bytes] = []
        self.backlog_bytes = 0
        self.closed = False
        self.subscription = None
        self.heartbeat: task.LoopingCall | None = None
        self.done: defer.Deferred = defer.Deferred(lambda _: self.close())

    def start(self) -> defer.Deferred:
        request = self.request
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.registerProducer(self, True)
        transport = getattr(request.channel, "transport", None)
        if hasattr(transport, "setTcpNoDelay"):
            # Small frames must leave at once: with Nagle's algorithm a frame
            # waits for the client's delayed ACK of the previous one (40-200 ms).
            transport.setTcpNoDelay(True)
        self._write(f"retry: {RETRY_MS}\n\n".encode())
        if self.reset is not None:
            body = json.dumps(self.reset, separators=(",", ":"))
            self._write(f"event: reset\ndata: {body}\n\n".encode())
        # Subscribed before replaying: live events wait until the replay is
        # done, then only those past it are sent.
        self.subscription = self.hub.subscribe(self.accepts, self._live, self.cursor,
                                               on_stop=self._cut, key=self.key)
        self.heartbeat = task.LoopingCall(self._write, b": keepalive\n\n")
        self.heartbeat.clock = self.clock
        self.heartbeat.start(HEARTBEAT_S, now=False)
        d = defer.ensureDeferred(self._replay())
        d.addErrback(self._failed)
        return self.done

    async def _replay(self):
        while not self.closed:
            rows = await self.read_page(self.cursor)
            if self.closed:
                return
            if rows:
                self._send(rows)
                self.cursor = rows[-1]["id"]
                self.subscription.cursor = self.cursor
            if len(rows) < REPLAY_PAGE:
                break
        if not self.closed:
            self.subscription.go_live()

    def _failed(self, failure):
        self.log.failure("event stream replay failed", failure)
        self._cut()

    def _live(self, events: list[dict]) -> None:
        self.cursor = events[-1]["id"]
        self._send(events)

    def _send(self, rows: list[dict]) -> None:
        render = self.render
        # A live batch is shared by the streams of one filter: joined once.
        derived = getattr(rows, "derived", None)
        data = derived.get(render) if derived is not None else None
        if data is None:
            data = b"".join([encoded(r, render) for r in rows])
            if derived is not None:
                derived[render] = data
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.paused:
            self.backlog.append(data)
            self.backlog_bytes += len(data)
            if self.backlog_bytes > self.max_backlog:
                # Too slow a reader: cut it off rather than hold its events.
                self._cut()
            return
        self.request.write(data)

    def _cut(self) -> None:
        transport = getattr(self.request.channel, "transport", None)
        self.close()
        if transport is not None:
            transport.abortConnection()

    # IPushProducer -----------------------------------------------------------

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        backlog, self.backlog, self.backlog_bytes = self.backlog, [], 0
        for data in backlog:
            self._write(data)

    def stopProducing(self):
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.backlog = []
        if self.subscription is not None:
            self.hub.unsubscribe(self.subscription)
        if self.heartbeat is not None and self.heartbeat.running:
            self.heartbeat.stop()
