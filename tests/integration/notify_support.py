"""
A real local HTTP receiver of notifications for the tests (this module holds
no tests): a Twisted web server on an ephemeral port that records every
request and answers from a script of statuses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from twisted.internet import endpoints
from twisted.web import resource, server


def verify(secret: str, headers: dict, body: bytes) -> bool:
    """
    Check a Standard Webhooks signature the way a receiver would.
    """
    key = (base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_")
           else secret.encode())
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(sig.split(",", 1)[1], expected)
               for sig in headers["webhook-signature"].split() if sig.startswith("v1,"))


class _Recorder(resource.Resource):
    isLeaf = True

    def __init__(self, receiver):
        super().__init__()
        self.receiver = receiver

    def render_POST(self, request):
        body = request.content.read()
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.receiver.requests.append({"path": request.path.decode(), "headers": headers,
                                       "body": body, "json": json.loads(body)})
        status = self.receiver.answers.pop(0) if self.receiver.answers else 200
        if status is None:
            # Never answered: the sender is left waiting.
            self.receiver.held.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(status)
        if 300 <= status < 400:
            request.setHeader(b"Location", b"/elsewhere")
        if status in (429, 503) and self.receiver.retry_after is not None:
            request.setHeader(b"Retry-After", str(self.receiver.retry_after).encode())
        return b"ok"


class Receiver:
    """
    C{answers}: statuses for the next requests (then 200); None leaves
    that request unanswered (held until the receiver stops).
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self.requests: list[dict] = []
        self.answers: list[int | None] = []
        self.held: list = []
        # Seconds sent as Retry-After with a 429 or 503, when set.
        self.retry_after: int | None = None
        self.port = None

    async def start(self) -> "Receiver":
        site = server.Site(_Recorder(self))
        site.noisy = False
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self.port = await endpoint.listen(site)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/hook"

    async def stop(self):
        for request in self.held:
            if not request.finished and not request._disconnected:
                request.transport.loseConnection()
        if self.port is not None:
            await self.port.stopListening()
