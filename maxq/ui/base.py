"""
The web UI's shared ground, a mixin of L{maxq.api.app.Api}: templates,
security headers, sessions (login, logout, CSRF), static files and the
C{GET /} redirect.  Pages are in L{maxq.ui.pages}, changes in
L{maxq.ui.actions}.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape

from maxq.api.base import app
from maxq.api.http import header
from maxq.tokens import OPERATOR
from maxq.ui import drawing, views
from maxq.ui.shared import SharedRenders
from maxq.ui.session import COOKIE, CSRF_HEADER, Sessions, clear_cookie_header, cookie_header

UI = "/ui"
HTML_TYPE = b"text/html; charset=utf-8"
# Scripts and styles only from our own files: nothing inline runs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
STATIC_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
}
STATIC_FILES = ("htmx.min.js", "ui.js", "events-worker.js", "graph.js", "output.js", "live.js",
                "admin.js", "ui.css", "NOTICE.txt")

_templates = Environment(
    loader=PackageLoader("maxq.ui", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True, lstrip_blocks=True,
    # Templates change only with the package.
    auto_reload=False,
)
_templates.globals.update(
    mark=views.mark, iso=views.iso_utc, utc=views.shown_utc, duration=views.duration,
    pretty=views.pretty_json, marks=views.STATUS_MARKS, draw=drawing,
)
_static: dict[str, bytes] = {}


def template(name: str):
    return _templates.get_template(name)


def secure_headers(request) -> None:
    request.setHeader(b"Content-Security-Policy", CSP.encode())
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"Referrer-Policy", b"same-origin")
    request.setHeader(b"Cache-Control", b"no-store")


def safe_next(raw: str | None) -> str:
    """
    Where to go after logging in: a path of the UI, never another site.
    """
    if raw and raw.startswith(UI + "/") and "//" not in raw and "\\" not in raw:
        return raw
    return UI + "/"


class UiBase:
    """
    Sessions and rendering for the UI's routes.  The session also lets the
    browser read C{/api/v1} (the event stream, step output) and change
    things there with the CSRF token: see L{_session_principal}.
    """

    _ui_sessions: Sessions | None = None

    @property
    def ui_sessions(self) -> Sessions:
        if self._ui_sessions is None:
            keys = self.credentials.api_keys
            self._ui_sessions = Sessions(keys[0] if keys else None, self.clock)
        return self._ui_sessions

    _ui_renders: SharedRenders | None = None

    @property
    def ui_renders(self) -> SharedRenders:
        """
        The live fragments' drawings, shared by the tabs of a session
        (L{maxq.ui.shared}).
        """
        if self._ui_renders is None:
            self._ui_renders = SharedRenders(self.events, self.clock)
        return self._ui_renders

    def _ui_session_nonce(self, request) -> str | None:
        raw = request.getCookie(COOKIE.encode())
        return self.ui_sessions.check(raw.decode("latin-1") if raw else None)

    def _session_principal(self, request):
        """
        The operator, for an API request that carries a valid UI session
        (and, unless it only reads, the session's CSRF token); else None.
        Only consulted when a key is required and no bearer key was sent.
        """
        nonce = self._ui_session_nonce(request)
        if nonce is None:
            return None
        if request.method not in (b"GET", b"HEAD") and not self.ui_sessions.csrf_ok(
                nonce, header(request, CSRF_HEADER)):
            return None
        return OPERATOR

    def _event_scope(self, request, run_id):
        """
        The event and output routes (SPEC §7) check their caller with this
        (C{maxq/api/events.py}); a tab's session reads them as the operator,
        which is what its C{EventSource} needs (it cannot send a bearer key).
        Anything with an Authorization header is judged by that alone.
        """
        if header(request, "Authorization") is None \
                and self._session_principal(request) is not None:
            return run_id
        return super()._event_scope(request, run_id)

    def _ui_csrf_ok(self, request, form_token: str | None = None) -> bool:
        nonce = self._ui_session_nonce(request)
        token = header(request, CSRF_HEADER) or form_token
        return self.ui_sessions.csrf_ok(nonce, token)

    def _ui_page_session(self, request) -> str | None:
        """
        The session's nonce for a page or fragment; starts an anonymous
        session when no key is required.  None means: log in first.
        """
        nonce = self._ui_session_nonce(request)
        if nonce is not None:
            return nonce
        if self.ui_sessions.required:
            return None
        value, max_age = self.ui_sessions.issue()
        request.setHeader(b"Set-Cookie", cookie_header(value, max_age, request.isSecure()))
        return self.ui_sessions.check(value)

    def _ui_html(self, request, code: int, name: str, nonce: str | None = None, /,
              **context) -> bytes:
        secure_headers(request)
        body = template(name).render(
            csrf=self.ui_sessions.csrf_token(nonce) if nonce else "",
            auth=self.ui_sessions.required, **context).encode()
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", HTML_TYPE)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return body

    def _ui_login_needed(self, request) -> bytes:
        """
        No session: pages go to the login form; fragments (htmx) are told
        to send the whole tab there.
        """
        secure_headers(request)
        target = (UI + "/login?next="
                  + quote(request.uri.decode("latin-1"), safe="/?=&"))
        if header(request, "HX-Request"):
            request.setHeader(b"HX-Redirect", target.encode())
            request.setResponseCode(401)
            return b""
        request.setResponseCode(303)
        request.setHeader(b"Location", target.encode())
        return b""

    def _ui_arg(self, request, name: str) -> str | None:
        values = (request.args or {}).get(name.encode())
        return values[0].decode("utf-8", "replace") if values else None

    # ---------------------------------------------------------------- routes

    @app.route("/", methods=["GET"])
    def ui_root(self, request):
        secure_headers(request)
        request.setResponseCode(302)
        request.setHeader(b"Location", (UI + "/").encode())
        return b""

    @app.route(UI + "/static/<name>", methods=["GET"])
    def ui_static(self, request, name):
        secure_headers(request)
        if name not in STATIC_FILES:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"no such file"
        data = _static.get(name)
        if data is None:
            data = _static[name] = (
                resources.files("maxq.ui").joinpath("static", name).read_bytes())
        kind = STATIC_TYPES[name.rsplit(".", 1)[1]]
        request.setHeader(b"Content-Type", kind.encode())
        # Files change only with the package: cache them, but revalidate
        # after an upgrade (the URL carries the version).
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return data

    @app.route(UI + "/login", methods=["GET"])
    def ui_login_form(self, request):
        nxt = safe_next(self._ui_arg(request, "next"))
        if not self.ui_sessions.required:
            request.setResponseCode(303)
            request.setHeader(b"Location", nxt.encode())
            return b""
        return self._ui_html(request, 200, "login.html", next=nxt, error=None)

    @app.route(UI + "/login", methods=["POST"])
    def ui_login(self, request):
        nxt = safe_next(self._ui_arg(request, "next"))
        if not self.ui_sessions.required:
            request.setResponseCode(303)
            request.setHeader(b"Location", nxt.encode())
            return b""
        key = self._ui_arg(request, "key") or ""
        principal = self.credentials.identify(f"Bearer {key}") if key else None
        if principal is None or not principal.is_operator:
            return self._ui_html(request, 401, "login.html", next=nxt,
                              error="That key is not valid.")
        value, max_age = self.ui_sessions.issue()
        request.setHeader(b"Set-Cookie", cookie_header(value, max_age, request.isSecure()))
        secure_headers(request)
        request.setResponseCode(303)
        request.setHeader(b"Location", nxt.encode())
        return b""

    @app.route(UI + "/logout", methods=["POST"])
    def ui_logout(self, request):
        secure_headers(request)
        if not self._ui_csrf_ok(request, self._ui_arg(request, "csrf")):
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"missing or wrong CSRF token"
        request.setHeader(b"Set-Cookie", clear_cookie_header(request.isSecure()))
        request.setResponseCode(303)
        request.setHeader(b"Location", (UI + "/login" if self.ui_sessions.required
                                        else UI + "/").encode())
        return b""
