"""
The one error type the API turns into a JSON error body.  Standard library
only, so every layer may raise it.
"""

from __future__ import annotations


class ApiError(Exception):
    """
    A request cannot be honoured.  Rendered as
    C{{"error": message, "code": code, "details": details}} with C{status}.
    """

    def __init__(self, status: int, code: str, message: str, /, **details):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict:
        return {"error": self.message, "code": self.code, "details": self.details}


def validation_error(message: str, **details) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", message, **details)


def run_not_found(run_id: str) -> ApiError:
    return ApiError(404, "RUN_NOT_FOUND", f"run {run_id} not found", runId=run_id)


def flow_not_found(name: str) -> ApiError:
    return ApiError(404, "FLOW_NOT_FOUND", f"flow {name!r} not found", flowName=name)


def step_not_found_in_run(run_id: str, step_id: str) -> ApiError:
    return ApiError(
        404,
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
