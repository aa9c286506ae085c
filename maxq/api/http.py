"""
HTTP plumbing for the API: JSON bodies in, JSON responses out, query
parameters checked, and a request class that refuses oversized bodies
before reading them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web.resource import Resource
from twisted.web.server import Request
from werkzeug.routing import PathConverter

from maxq.errors import ApiError, validation_error

JSON_TYPE = b"application/json"
# Deepest nesting of arrays and objects a request body may have.
MAX_JSON_DEPTH = 64
_INTEGER_RE = re.compile(r"-?[0-9]+")
# A JSON escape of a UTF-16 surrogate: the only way a body can carry a lone
# surrogate, which no database or process environment can hold.
_SURROGATE_ESCAPE_RE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_response(request, status: int, body: Any) -> bytes:
    """
    Set the status and headers and return the body in one piece (one write,
    so headers and body share a packet).
    """
    data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Content-Length", str(len(data)).encode())
    return data


def read_json(request, empty: Any = None) -> Any:
    """
    The request body as JSON.  An empty body gives C{empty} when that is not
    None, else a 400.
    """
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        if empty is not None:
            return empty
        raise ApiError(400, "INVALID_JSON", "a JSON body is required")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant,
                           parse_float=_finite_float)
    except _NotStrictJson as e:
        raise ApiError(400, "INVALID_JSON", str(e)) from None
    except UnicodeDecodeError:
        raise ApiError(400, "INVALID_JSON", "the body is not UTF-8") from None
    except RecursionError:
        # The C parser gives up after about a thousand levels, at once.
        raise _too_deep() from None
    except ValueError as e:
        raise ApiError(400, "INVALID_JSON", f"malformed JSON: {e}") from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise _too_deep()
    if _SURROGATE_ESCAPE_RE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "INVALID_JSON",
                           "the body contains an unpaired UTF-16 surrogate "
                           "(\\uD800-\\uDFFF alone)") from None
    return value


def _too_deep() -> ApiError:
    return ApiError(400, "INVALID_JSON",
                    f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels",
                    limit=MAX_JSON_DEPTH)


def _deeper_than(value: Any, limit: int) -> bool:
    """
    Whether arrays and objects in C{value} nest more than C{limit} deep.
    Iterative, and visits containers only.
    """
    if not isinstance(value, (dict, list)):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return False


class _NotStrictJson(ValueError):
    pass


def _reject_constant(name: str):
    raise _NotStrictJson(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotStrictJson(f"number {text[:40]} is out of range")
    return value


def header(request, name: str) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else value


class Query:
    """
    Typed access to query parameters; a bad value is a 400 that names it,
    and so is a parameter the route does not know (C{allowed} lists those
    it does).
    """

    def __init__(self, request, allowed: tuple[str, ...] = ()):
        self.args = {
            k.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in vs]
            for k, vs in (request.args or {}).items()
        }
        unknown = sorted(set(self.args) - set(allowed))
        if unknown:
            raise validation_error(
                "unknown query parameters: " + ", ".join(unknown)
                + (f" (this route takes {', '.join(allowed)})" if allowed
                   else " (this route takes none)"),
                parameters=unknown,
            )

    def text(self, name: str) -> str | None:
        values = self.args.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise validation_error(f"query parameter {name} given more than once",
                                   parameter=name)
        return values[0]

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        value = int(raw) if _INTEGER_RE.fullmatch(raw) and len(raw) <= 20 else None
        if value is None or not minimum <= value <= maximum:
            raise validation_error(
                f"{name} must be an integer from {minimum} to {maximum}",
                parameter=name, value=raw,
            )
        return value

    def choice(self, name: str, choices, default: str | None = None) -> str | None:
        raw = self.text(name)
        if raw is None:
            return default
        if raw not in choices:
            raise validation_error(
                f"{name} must be one of {', '.join(choices)}", parameter=name, value=raw
            )
        return raw

    def id_list(self, name: str) -> list[str] | None:
        raw = self.text(name)
        if raw is None:
            return None
        return [part for part in (p.strip() for p in raw.split(",")) if part]


class FlowNameConverter(PathConverter):
    """
    A flow name in a URL.  Like werkzeug's C{path}, it takes percent-encoded
    slashes (so C{/flows/..%2Fetc} is answered C{FLOW_NOT_FOUND}, not with a
    route 404), but it never ends in the name of a route below a flow:
    C{GET /flows/x/runs} belongs to the trigger route (and is a 405), not to
    C{GET /flows/{flow}}; so do C{/schedule}, its actions and C{/backfills}.
    """

    regex = (r"[^/](?:(?!/(?:runs|schedule|schedule/pause|schedule/resume"
             r"|schedule/log|backfills)$).)*")


PAYLOAD_TOO_LARGE = 413


class LimitedRequest(Request):
    """
    A request that refuses a body larger than the site's C{max_body_bytes}
    as soon as it knows (Content-Length, or the running total of a chunked
    body), answering 413 and closing the connection without reading on.
    """

    _rejected = False
    _received = 0

    def _limit(self) -> int:
        return getattr(self.channel.site, "max_body_bytes", 10 * 1024 * 1024)

    def gotLength(self, length):
        if length is not None and length > self._limit():
            self._reject()
        super().gotLength(length if not self._rejected else 0)

    def handleContentChunk(self, data):
        if self._rejected:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._reject()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if self._rejected:
            return
        super().requestReceived(command, path, version)

    def _reject(self) -> None:
        self._rejected = True
        # No "100 Continue" after our answer: the client should not send on.
        self.requestHeaders.removeHeader(b"expect")
        limit = self._limit()
        body = json.dumps({
            "error": f"request body larger than {limit} bytes",
            "code": "PAYLOAD_TOO_LARGE",
            "details": {"limit": limit},
        }).encode()
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body
        )
        transport.loseConnection()


class Utf8PathGuard(Resource):
    """
    Wraps the API so that a URL which is not UTF-8 once percent-decoded gets
    the API's JSON 400 (Klein answers such URLs with plain text before any
    route or error handler runs).
    """

    isLeaf = True

    def __init__(self, wrapped: Resource):
        super().__init__()
        self.wrapped = wrapped

    def render(self, request):
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return json_response(request, 400, {
                "error": "the URL is not valid UTF-8",
                "code": "INVALID_URL",
                "details": {},
            })
        return self.wrapped.render(request)
