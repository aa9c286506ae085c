"""
The HTTP client of a running server, through treq: its URL and key from the
environment, and L{Client.request}, which answers decoded JSON or raises
L{ApiFailure} or L{Unreachable}.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from twisted.internet import defer

DEFAULT_URL = "http://127.0.0.1:3000"
API_PREFIX = "/api/v1"
REQUEST_TIMEOUT = 30.0


class ApiFailure(Exception):
    """
    The server answered with an error body (or something that is not JSON).
    """

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class Unreachable(Exception):
    """
    No answer from the server: refused, unknown host, reset or timed out.
    """


def server_url(args: argparse.Namespace, env=os.environ) -> str:
    """
    The server's base URL, from C{--url} or C{MAXQ_URL}.  A URL that already
    ends in C{/api/v1} is accepted too.
    """
    url = (getattr(args, "url", None) or env.get("MAXQ_URL") or DEFAULT_URL)
    url = url.rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)]
    return url


def api_key(env=os.environ) -> str | None:
    keys = [k.strip() for k in env.get("MAXQ_API_KEY", "").split(",") if k.strip()]
    return keys[0] if keys else None


class Client:
    """
    A small JSON client of the MaxQ API over one persistent connection pool.
    """

    def __init__(self, reactor, url: str, key: str | None = None,
                 timeout: float = REQUEST_TIMEOUT):
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.reactor = reactor
        self.url = url
        self.timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._http = HTTPClient(Agent(reactor, pool=self._pool))
        self._headers = {"Accept": ["application/json"]}
        if key:
            self._headers["Authorization"] = [f"Bearer {key}"]

    async def request(self, method: str, path: str, body: Any = None,
                      params: dict | None = None,
                      headers: dict[str, str] | None = None) -> Any:
        """
        Send one request to C{/api/v1<path>} and return the decoded JSON
        body; raise L{ApiFailure} for an error status, L{Unreachable} when
        the server does not answer.
        """
        from twisted.internet import error
        from twisted.web import _newclient

        extra = headers or {}
        headers = dict(self._headers)
        headers.update({k: [v] for k, v in extra.items()})
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = ["application/json"]
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            response = await self._http.request(
                method, self.url + API_PREFIX + path, params=query or None,
                headers=headers, data=data, reactor=self.reactor,
                timeout=self.timeout,
            )
            content = await response.content()
        except error.ConnectionRefusedError:
            raise Unreachable(
                f"cannot connect to MaxQ at {self.url}: connection refused "
                "(is the server running? set MAXQ_URL to point elsewhere)"
            ) from None
        except (error.ConnectError, error.DNSLookupError) as e:
            raise Unreachable(f"cannot connect to MaxQ at {self.url}: {e}") from None
        except defer.CancelledError:
            raise Unreachable(
                f"no answer from MaxQ at {self.url} within {self.timeout:g}s"
            ) from None
        except (_newclient.ResponseFailed, _newclient.RequestNotSent,
                _newclient.RequestTransmissionFailed) as e:
            raise Unreachable(f"connection to MaxQ at {self.url} failed: {e}") from None
        try:
            decoded = json.loads(content) if content else None
        except ValueError:
            decoded = None
        if response.code >= 400:
            if isinstance(decoded, dict) and "error" in decoded:
                raise ApiFailure(response.code, str(decoded["error"]),
                                 str(decoded.get("code", f"HTTP_{response.code}")))
            text = content.decode("utf-8", "replace").strip()[:200]
            raise ApiFailure(response.code, f"HTTP {response.code}: {text}",
                             f"HTTP_{response.code}")
        if decoded is None and content:
            raise ApiFailure(response.code, "the server's answer is not JSON",
                             "BAD_RESPONSE")
        return decoded

    async def close(self) -> None:
        await self._pool.closeCachedConnections()
