"""
A minimal Server-Sent Events client over a raw TCP connection (this module
holds no tests): it parses the chunked HTTP response into frames, can stop
reading (a slow client) and can hang up at any point.
"""

from __future__ import annotations

import json

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol


class SseClient(Protocol):
    def __init__(self, request: bytes):
        self.request = request
        self.raw = b""
        self.headers: dict[str, str] | None = None
        self.status: int | None = None
        self.body = b""
        self.frames: list[dict] = []
        self.comments = 0
        self.closed = defer.Deferred()
        self.lost = False

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.raw += data
        if self.headers is None:
            head, sep, rest = self.raw.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            self.headers = {k.lower(): v.strip() for k, _, v in
                            (line.partition(":") for line in lines[1:])}
            self.raw = rest
        self._dechunk()

    def _dechunk(self):
        while True:
            size_line, sep, rest = self.raw.partition(b"\r\n")
            if not sep:
                return
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            self.raw = rest[size + 2:]
            self._frames()

    def _frames(self):
        while b"\n\n" in self.body:
            block, _, self.body = self.body.partition(b"\n\n")
            frame: dict = {}
            for line in block.decode("utf-8").split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                    continue
                key, _, value = line.partition(": ")
                frame[key] = value
            if "data" in frame:
                frame["json"] = json.loads(frame["data"])
            if frame:
                self.frames.append(frame)

    def connectionLost(self, reason):
        self.lost = True
        self.closed.callback(None)

    def events(self) -> list[dict]:
        return [f["json"] for f in self.frames if f.get("event") not in (None, "reset")]

    def ids(self) -> list[int]:
        return [int(f["id"]) for f in self.frames if "id" in f]


async def open_stream(server, path: str, last_event_id: int | None = None,
                      token: str | None = None) -> SseClient:
    port = int(server.url.rsplit(":", 1)[1])
    lines = [f"GET /api/v1{path} HTTP/1.1", "Host: 127.0.0.1",
             "Accept: text/event-stream"]
    auth = token or server.headers.get("Authorization", "").removeprefix("Bearer ")
    if auth:
        lines.append(f"Authorization: Bearer {auth}")
    if last_event_id is not None:
        lines.append(f"Last-Event-ID: {last_event_id}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    client = SseClient(request)
    await connectProtocol(TCP4ClientEndpoint(server.reactor, "127.0.0.1", port), client)
    await wait_until(server.reactor, lambda: client.headers is not None or client.lost,
                     what="response headers")
    return client


async def wait_until(reactor, predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


async def all_events(server, path: str = "/events", query: str = "") -> list[dict]:
    """
    Every event of a JSON listing, page after page.
    """
    events, after = [], 0
    while True:
        status, page = await server.get(f"{path}?after={after}&limit=1000{query}")
        assert status == 200, page
        events.extend(page["events"])
        if not page["events"]:
            return events
        after = page["lastId"]
