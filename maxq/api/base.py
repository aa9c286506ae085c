"""
The API's shared ground: the one Klein app every route group registers on,
authorization, the mapping of domain errors to HTTP statuses, error
handlers and the OpenAPI document (C{/health} is in L{maxq.api.operations}).
No SQL and no processes.
"""

from __future__ import annotations

import json
from importlib import resources

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from maxq.api.http import FlowNameConverter, Query, header, json_response
from maxq.engine import Engine
from maxq.errors import ApiError, Conflict, Invalid, Refusal, StoreUnavailable
from maxq.errors import NotFound as Missing
from maxq.tokens import Credentials

PREFIX = "/api/v1"
ORDERS = ("asc", "desc")
PAGINATION = ("limit", "offset", "sortBy", "sortOrder")
# The one place a domain error becomes an HTTP status.
STATUSES = ((Invalid, 400), (Missing, 404), (Conflict, 409))

# The API's one Klein app: route groups in other modules decorate methods
# with C{@app.route}; Klein binds each to the L{maxq.api.app.Api} instance.
app = Klein()
app.url_map.converters["flow"] = FlowNameConverter

_openapi: bytes | None = None


def openapi_document() -> dict:
    """
    The OpenAPI 3.1 description of this API (C{maxq/api/openapi.json}).
    """
    global _openapi
    if _openapi is None:
        _openapi = resources.files("maxq.api").joinpath("openapi.json").read_bytes()
    return json.loads(_openapi)


def refusal_status(error: Refusal) -> int:
    """
    The HTTP status of a domain error.
    """
    for kind, status in STATUSES:
        if isinstance(error, kind):
            return status
    return 400


class ApiBase:
    """
    What every group of routes shares: the Klein C{app} (one for the whole
    API; route groups are mixins of L{maxq.api.app.Api} that register on
    it), the collaborators, authorization, error handlers and the OpenAPI
    document.
    """

    app = app
    log = Logger()

    def __init__(self, engine: Engine, store, clock, scheduler=None,
                 credentials: Credentials | None = None):
        self.engine = engine
        self.store = store
        self.clock = clock
        self.scheduler = scheduler
        self.credentials = credentials or Credentials(())

    async def _authorize(self, request, run_id: str | None = None,
                         fields_of: str | None = None) -> None:
        """
        Let the operator do anything; let a script's token act only on its
        own run (C{run_id} given: a route scripts may use), post fields only
        for its own step, and only while the run is unfinished.
        """
        principal = self._principal(request)
        if principal is None:
            raise ApiError(401, "UNAUTHORIZED",
                           "missing or invalid credentials: send Authorization: Bearer <key>")
        if principal.is_operator:
            return
        if run_id is None or principal.run_id != run_id:
            raise ApiError(403, "FORBIDDEN", "a script token may not do this")
        if fields_of is not None and principal.step_id not in (None, fields_of):
            raise ApiError(403, "FORBIDDEN", "a step's token may post only its own fields")
        if await self.engine.run_finished(run_id):
            raise ApiError(403, "FORBIDDEN", "this run has ended; its script tokens with it")

    # ---------------------------------------------------------------- errors

    @app.handle_errors(Refusal)
    def _refused(self, request, failure):
        error = failure.value
        status = error.status if isinstance(error, ApiError) else refusal_status(error)
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="maxq"')
        return json_response(request, status, error.body())

    @app.handle_errors(StoreUnavailable)
    def _unavailable(self, request, failure):
        self.log.warn("database unavailable: {error}", error=failure.value)
        return json_response(request, 503, {
            "error": "the database is unavailable; try again",
            "code": "SERVICE_UNAVAILABLE",
            "details": {"reason": str(failure.value)},
        })

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        return json_response(request, 404, {
            "error": f"no route for {request.path.decode('latin-1', 'replace')}",
            "code": "NOT_FOUND",
            "details": {},
        })

    @app.handle_errors(MethodNotAllowed)
    def _method_not_allowed(self, request, failure):
        allowed = sorted(failure.value.valid_methods or [])
        if allowed:
            request.setHeader(b"Allow", ", ".join(allowed).encode())
        return json_response(request, 405, {
            "error": f"method {request.method.decode('latin-1')} not allowed here",
            "code": "METHOD_NOT_ALLOWED",
            "details": {"allowed": allowed},
        })

    @app.handle_errors(Exception)
    def _server_fault(self, request, failure):
        self.log.failure("unhandled error serving {path}", failure,
                         path=request.path.decode("latin-1", "replace"))
        return json_response(request, 500, {
            "error": "internal server error",
            "code": "INTERNAL_ERROR",
            "details": {},
        })

    # /health is in maxq.api.operations.

    def _principal(self, request):
        """
        Who sends C{request}: its bearer key or token, else (without an
        Authorization header) the web UI's session, if any.
        """
        authorization = header(request, "Authorization")
        principal = self.credentials.identify(authorization)
        if principal is None and authorization is None:
            principal = self._session_principal(request)
        return principal

    def _session_principal(self, request):
        """
        The principal of a web UI session; the UI's mixin overrides this.
        """
        return None

    def _require_operator(self, request) -> None:
        principal = self._principal(request)
        if principal is None:
            raise ApiError(401, "UNAUTHORIZED",
                           "missing or invalid credentials: send Authorization: Bearer <key>")
        if not principal.is_operator:
            raise ApiError(403, "FORBIDDEN", "a script token may not do this")

    # --------------------------------------------------------------- openapi

    @app.route(PREFIX + "/openapi.json", methods=["GET"])
    def openapi(self, request):
        """
        The API's OpenAPI document; readable without credentials, like
        C{/health}: it describes the API, not anything in it.
        """
        Query(request)
        return json_response(request, 200, openapi_document())
