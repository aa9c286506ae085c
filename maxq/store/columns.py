"""
What the SQL primitives know about the tables, and the small helpers that
turn rows and conditions into statement text: which columns hold JSON and
which may be updated, the sortable columns of a listing, the pieces of the
claim statements both backends share, encoding and decoding rows, WHERE and
ORDER BY clauses, parameter cleaning and INSERT chunking.
"""

from __future__ import annotations

import json
from typing import Any

JSON_COLUMNS = {
    "runs": ("input", "output", "error", "metadata", "wait_reason"),
    "steps": ("depends_on", "env", "fields", "error", "requires", "inputs",
              "wait_reason"),
    "logs": ("metadata",),
    "stages": (),
    "flow_calls": (),
    "step_deps": (),
    "schedules": (),
    "schedule_log": ("details",),
    "backfills": ("input", "skipped"),
    "pools": (),
}

UPDATABLE = {
    "runs": {
        "status", "name", "description", "input", "output", "error", "metadata",
        "stdout", "stderr", "termination_reason", "started_at", "completed_at",
        "wait_reason",
    },
    "stages": {"status", "final", "fail_fast", "completed_at", "created_at",
               "flow_call_id", "flow_call_interrupted"},
    "steps": {
        "status", "name", "depends_on", "deps_left", "max_retries", "retry_count",
        "retry_delay_ms", "retry_backoff", "timeout_seconds", "env", "fields", "error",
        "exit_code", "queued_at", "started_at", "completed_at", "duration_ms",
        "ready_at", "stdout", "stderr", "worker_id", "termination_reason",
        "interruptions", "pgid", "wait_reason", "allowed_failure",
    },
    "flow_calls": {
        "status", "scheduled_stages", "exit_code", "worker_id", "pgid",
        "started_at", "completed_at",
    },
}

RUN_SORT = {"createdAt": "created_at", "startedAt": "started_at",
            "completedAt": "completed_at"}
STEP_SORT = {"createdAt": "created_at", "startedAt": "started_at",
             "completedAt": "completed_at", "id": "id", "name": "name"}

# The pieces of the claim statements both backends share; each backend
# builds its own statement around them (how rows are locked and walked).
# What a claim sets on a step: running, for this worker, a new attempt.
CLAIM_STEP_SET = (
    "status = 'running', worker_id = ?, started_at = ?, claim_no = claim_no + 1, "
    "completed_at = NULL, duration_ms = NULL, exit_code = NULL, error = NULL, "
    "termination_reason = NULL"
)
# A runnable step c of a running run r (parameter: now).
RUNNABLE_ANY = (
    "c.status = 'pending' AND c.deps_left = 0 AND c.ready_at <= ? "
    "AND r.status = 'running'"
)
# ... that no limit may hold back: the plain claim's, which counts nothing
# (maxq.store.limits claims the others).
RUNNABLE_STEP = f"{RUNNABLE_ANY} AND c.gate IS NULL"
# The plain claim's order: priority, then age, then insertion.
CLAIM_ORDER = "c.priority DESC, c.ready_at"
# The oldest open call c of an active run r: one flow.sh per run, in order.
NEXT_FLOW_CALL = (
    "c.status = 'pending' AND r.status IN ('pending', 'running') "
    "AND c.id = (SELECT min(o.id) FROM flow_calls o "
    "WHERE o.run_id = c.run_id AND o.status IN ('pending', 'running'))"
)

# Rows per multi-row INSERT: well under SQLite's 32766 bound parameters.
INSERT_CHUNK = 500


def encode(table: str, row: dict) -> dict:
    out = dict(row)
    for col in JSON_COLUMNS[table]:
        if col in out and out[col] is not None:
            out[col] = to_json(out[col])
    return out


def to_json(value) -> str:
    """
    A column's JSON text; the empty object and list (most steps' C{env},
    C{fields} and C{depends_on}) without the encoder's cost.
    """
    if not value:
        if type(value) is dict:
            return "{}"
        if type(value) is list:
            return "[]"
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def decode(table: str, columns: list[str], raw) -> dict:
    row = dict(zip(columns, raw))
    for col in JSON_COLUMNS[table]:
        value = row.get(col)
        if value is not None:
            row[col] = json.loads(value)
    return row


def where(conditions: dict[str, Any]) -> tuple[str, list]:
    """
    A WHERE clause from C{column: value} (lists become IN; None is skipped).
    """
    parts, params = [], []
    for col, value in conditions.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            value = list(value)
            if not value:
                parts.append("1 = 0")
                continue
            parts.append(f"{col} IN ({','.join('?' * len(value))})")
            params.extend(value)
        else:
            parts.append(f"{col} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


def order_by(column: str, tie_break: str, sort_order: str) -> str:
    """
    The ORDER BY of a listing, the same on every backend: NULL times sort
    lowest (SQLite's rule, spelled out for PostgreSQL), ties by C{tie_break}.
    """
    if sort_order == "desc":
        return f"{column} DESC NULLS LAST, {tie_break} DESC"
    return f"{column} ASC NULLS FIRST, {tie_break} ASC"


def clean_params(params) -> list:
    """
    Text parameters with NUL replaced by U+FFFD.  PostgreSQL text cannot
    hold NUL; doing the same on every backend keeps them alike: a lookup by
    such a value finds nothing, and free text keeps a visible mark, as
    captured output does for bytes that are not UTF-8.
    """
    return [p.replace("\x00", "\ufffd") if isinstance(p, str) and "\x00" in p else p
            for p in params]


def chunks(items: list, size: int = INSERT_CHUNK):
    for i in range(0, len(items), size):
        yield items[i:i + size]
