"""
The web UI's changes (a mixin of L{maxq.api.app.Api}): trigger, abort,
retry, pause, resume, retry a step.  Each is a POST under C{/ui/} with the
session's CSRF token, calls the engine in-process exactly as the API route
of the same name does, and answers a fragment with the outcome or the
API's error (C{{"error", "code", "details"}}), so the page can show it.
The page itself is brought up to date by the events the change causes.
"""

from __future__ import annotations

import json

from maxq import model
from maxq.api.base import app
from maxq.errors import Refusal
from maxq.ui.base import UI
from maxq.ui.pages import UiPages

# Told to the page with a successful change, so that it redraws what the
# change touched at once, without waiting for the events it causes.
CHANGED = b"maxq-changed"
RUN_ACTIONS = {
    "abort": ("abort", "Abort requested."),
    "retry": ("retry_run", "The run continues from where it failed."),
    "pause": ("pause", "Paused."),
    "resume": ("resume", "Resumed."),
}


class UiActions(UiPages):

    def _ui_feedback(self, request, nonce, code: int, error: dict | None = None,
                  message: str = "", link: str | None = None,
                  link_text: str = "") -> bytes:
        return self._ui_page(request, code, "feedback.html", nonce, error=error,
                          message=message, link=link, link_text=link_text)

    def _ui_change_session(self, request) -> tuple[str | None, bytes | None]:
        """
        The session of a change, or the answer refusing it: no session, or
        no valid CSRF token.
        """
        nonce = self._ui_session_nonce(request)
        if nonce is None:
            return None, self._ui_login_needed(request)
        if not self._ui_csrf_ok(request):
            return None, self._ui_feedback(request, nonce, 403, error={
                "error": "missing or wrong CSRF token; reload the page",
                "code": "CSRF_FAILED", "details": {}})
        return nonce, None

    def _ui_refusal(self, request, nonce, error: Refusal) -> bytes:
        return self._ui_feedback(request, nonce, self._ui_refusal_status(error),
                              error=error.body())

    @app.route(UI + "/flows/<flow:flow>/trigger", methods=["POST"])
    async def ui_trigger(self, request, flow):
        nonce, refused = self._ui_change_session(request)
        if refused is not None:
            return refused
        raw = (self._ui_arg(request, "input") or "").strip()
        body: dict = {}
        if raw:
            try:
                body["input"] = json.loads(raw)
            except ValueError as e:
                return self._ui_feedback(request, nonce, 400, error={
                    "error": f"the input is not valid JSON: {e}",
                    "code": "INVALID_JSON", "details": {}})
        try:
            model.check_run_limits(body)
            run, _created = await self.engine.create_run(flow, body, None)
        except Refusal as e:
            return self._ui_refusal(request, nonce, e)
        link = f"{UI}/runs/{run['id']}"
        request.setHeader(b"HX-Redirect", link.encode())
        return self._ui_feedback(request, nonce, 201, message="Run started:", link=link,
                              link_text=run["id"])

    @app.route(UI + "/runs/<run_id>/<action>", methods=["POST"])
    async def ui_run_action(self, request, run_id, action):
        nonce, refused = self._ui_change_session(request)
        if refused is not None:
            return refused
        if action not in RUN_ACTIONS:
            return self._ui_feedback(request, nonce, 404, error={
                "error": f"no action {action}", "code": "NOT_FOUND", "details": {}})
        method, message = RUN_ACTIONS[action]
        try:
            outcome = await getattr(self.engine, method)(run_id)
        except Refusal as e:
            return self._ui_refusal(request, nonce, e)
        if isinstance(outcome, dict) and outcome.get("message"):
            message = outcome["message"]
        request.setHeader(b"HX-Trigger", CHANGED)
        return self._ui_feedback(request, nonce, 200, message=message)

    @app.route(UI + "/runs/<run_id>/steps/<step_id>/retry", methods=["POST"])
    async def ui_retry_step(self, request, run_id, step_id):
        nonce, refused = self._ui_change_session(request)
        if refused is not None:
            return refused
        try:
            outcome = await self.engine.retry_step(run_id, step_id)
        except Refusal as e:
            return self._ui_refusal(request, nonce, e)
        request.setHeader(b"HX-Trigger", CHANGED)
        return self._ui_feedback(request, nonce, 200,
                              message=outcome.get("message") or "Step retried.")
