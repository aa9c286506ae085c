"""
The errors a request can be refused with.  Standard library only, so every
layer may raise them.

The rules (model, engine) raise domain errors that say what went wrong and
never which HTTP status that is: L{Invalid} (the request breaks a rule or a
limit), L{NotFound} (it names nothing that exists) and L{Conflict} (the
state of the run does not allow it now).  Only the API decides statuses: it
maps these in one place (C{maxq/api/app.py}) and raises L{ApiError}, with a
status of its own, for what only HTTP knows (credentials, bodies, routes).
"""

from __future__ import annotations


class Refusal(Exception):
    """
    A request cannot be honoured.  Rendered as
    C{{"error": message, "code": code, "details": details}}.
    """

    def __init__(self, code: str, message: str, /, **details):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict:
        return {"error": self.message, "code": self.code, "details": self.details}


class Invalid(Refusal):
    """
    The request breaks a rule or a limit, whatever the state.
    """


class NotFound(Refusal):
    """
    The request names a run, step or flow that does not exist.
    """


class Conflict(Refusal):
    """
    The request is well formed, but the run's state does not allow it now.
    """


class ApiError(Refusal):
    """
    A refusal only the HTTP layer knows of, with its status.
    """

    def __init__(self, status: int, code: str, message: str, /, **details):
        super().__init__(code, message, **details)
        self.status = status


def validation_error(message: str, **details) -> Invalid:
    return Invalid("VALIDATION_ERROR", message, **details)


def run_not_found(run_id: str) -> NotFound:
    return NotFound("RUN_NOT_FOUND", f"run {run_id} not found", runId=run_id)


def flow_not_found(name: str) -> NotFound:
    return NotFound("FLOW_NOT_FOUND", f"flow {name!r} not found", flowName=name)


def step_not_found_in_run(run_id: str, step_id: str) -> NotFound:
    return NotFound(
        "STEP_NOT_FOUND",
        f"step {step_id!r} not found in run {run_id}",
        runId=run_id,
        stepId=step_id,
    )


class StoreUnavailable(Exception):
    """
    The database cannot be reached or is busy past its retry budget; the API
    answers 503.
    """
