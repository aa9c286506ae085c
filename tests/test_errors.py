"""
Domain errors say what went wrong; only the API turns them into statuses.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from maxq.api.app import refusal_status
from maxq.errors import (
    ApiError, Conflict, Invalid, NotFound, Refusal, flow_not_found, run_not_found,
    step_not_found_in_run, validation_error,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("error, status", [
    (Invalid("TOO_MANY_STEPS", "too many"), 400),
    (validation_error("bad"), 400),
    (NotFound("RUN_NOT_FOUND", "no run"), 404),
    (run_not_found("r"), 404),
    (flow_not_found("f"), 404),
    (step_not_found_in_run("r", "s"), 404),
    (Conflict("RUN_ACTIVE", "running"), 409),
])
def test_each_kind_of_domain_error_has_one_status(error, status):
    assert refusal_status(error) == status
    assert error.body() == {"error": error.message, "code": error.code,
                            "details": error.details}


def test_an_api_error_is_a_refusal_with_its_own_status():
    error = ApiError(401, "UNAUTHORIZED", "who are you")
    assert isinstance(error, Refusal) and error.status == 401


def _names_api_error(path: Path) -> bool:
    return any(isinstance(node, ast.Name) and node.id == "ApiError"
               or isinstance(node, ast.alias) and node.name == "ApiError"
               for node in ast.walk(ast.parse(path.read_text())))


def test_only_the_api_knows_http_statuses():
    rules = [p for p in sorted((ROOT / "maxq").rglob("*.py"))
             if "api" not in p.relative_to(ROOT / "maxq").parts
             and p.name != "errors.py"]
    assert [str(p.relative_to(ROOT)) for p in rules if _names_api_error(p)] == []


def test_the_status_check_sees_an_api_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from maxq.errors import ApiError\nraise ApiError(409, 'X', 'y')\n")
    assert _names_api_error(bad)
