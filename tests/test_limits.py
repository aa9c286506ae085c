"""
The size and shape limits of maxq.model and maxq.api.http, without a server.
"""

from __future__ import annotations

import io
import time

import pytest

from maxq import model
from maxq.api.http import MAX_JSON_DEPTH, Query, read_json
from maxq.errors import Refusal


class _Request:
    def __init__(self, body: bytes = b"", args: dict | None = None):
        self.content = io.BytesIO(body)
        self.args = args or {}


def _code(fn, *args) -> str | None:
    try:
        fn(*args)
    except Refusal as e:
        return e.code
    return None


def test_json_size_counts_utf8_bytes_of_compact_json():
    assert model.json_size("é") == 4  # with its quotes
    assert model.json_size({"a": [1, 2]}) == len('{"a":[1,2]}')
    assert model.json_size({"é": "é"}) == len('{"é":"é"}'.encode())


def test_check_run_limits():
    big = "x" * model.MAX_VALUE_BYTES
    assert _code(model.check_run_limits, {"input": big}) == "VALUE_TOO_LARGE"  # + quotes
    assert _code(model.check_run_limits, {"input": big[:-2]}) is None
    assert _code(model.check_run_limits, {"output": {"k": big}}) == "VALUE_TOO_LARGE"
    assert _code(model.check_run_limits, {"name": "é" * 513}) == "VALUE_TOO_LARGE"
    assert _code(model.check_run_limits, {"name": "é" * 512}) is None
    assert _code(model.check_run_limits, {"description": "a\0"}) == "VALIDATION_ERROR"
    assert _code(model.check_run_limits, [1]) is None  # shape is checked elsewhere


def test_check_log_limits():
    assert _code(model.check_log_limits, {"message": "m" * 65537}) == "VALUE_TOO_LARGE"
    assert _code(model.check_log_limits, {"message": "m" * 65536}) is None
    assert _code(model.check_log_limits, {"metadata": {"k": "v" * 65536}}) == \
        "VALUE_TOO_LARGE"
    assert _code(model.check_log_limits, {"entityId": "e" * 129}) == "VALIDATION_ERROR"
    assert _code(model.check_log_limits, {"entityId": "e" * 128}) is None


def test_check_fields_size():
    assert _code(model.check_fields_size, {"a": "x" * model.MAX_FIELDS_BYTES}, "s") == \
        "FIELDS_TOO_LARGE"
    assert _code(model.check_fields_size, {"a": "x" * 1000}, "s") is None


def test_env_total_size():
    env = {f"K{i}": "v" * 30_000 for i in range(9)}
    with pytest.raises(Refusal) as e:
        model._check_env(env, "s")
    assert e.value.code == "INVALID_ENV" and "in all" in e.value.message
    model._check_env({f"K{i}": "v" * 25_000 for i in range(10)}, "s")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 10_000, 1_000_000])
def test_read_json_rejects_deep_nesting_fast(depth):
    body = b"[" * depth + b"]" * depth
    started = time.monotonic()
    with pytest.raises(Refusal) as e:
        read_json(_Request(body))
    assert e.value.code == "INVALID_JSON"
    assert e.value.details == {"limit": MAX_JSON_DEPTH}
    assert time.monotonic() - started < 0.5


def test_read_json_accepts_the_limit_depth():
    depth = MAX_JSON_DEPTH
    assert read_json(_Request(b'{"a":' * depth + b"1" + b"}" * depth)) is not None


def test_read_json_rejects_unpaired_surrogates_only():
    with pytest.raises(Refusal):
        read_json(_Request(rb'["\udc00"]'))
    assert read_json(_Request(rb'["\ud83d\ude00", "\\ud800"]')) == ["\U0001F600", "\\ud800"]


def test_query_rejects_unknown_parameters():
    with pytest.raises(Refusal) as e:
        Query(_Request(args={b"limit": [b"5"], b"colour": [b"x"], b"b": [b""]}), ("limit",))
    assert e.value.code == "VALIDATION_ERROR"
    assert e.value.details == {"parameters": ["b", "colour"]}
    assert Query(_Request(args={b"limit": [b"5"]}), ("limit",)).integer("limit", 1, 1, 9) == 5


@pytest.mark.parametrize("raw", [b"-1", b"abc", b"1.5", b" 5", b"\xef\xbc\x91", b"",
                                 b"1" * 25, b"0x10"])
def test_query_integer_is_strict(raw):
    q = Query(_Request(args={b"limit": [raw]}), ("limit",))
    with pytest.raises(Refusal):
        q.integer("limit", 1, 1, 100)
