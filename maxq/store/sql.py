"""
The store's primitives, written once in the SQL that SQLite and PostgreSQL
share.  A backend subclasses L{SqlTransaction} and supplies how a statement
runs (L{SqlTransaction._execute}) and the few statements that differ:
claiming, locking a run, and waking other servers.

Statements use C{?} placeholders; a backend that wants another style
rewrites them once per statement text.
"""

from __future__ import annotations

import json
from typing import Any

from zope.interface import implementer

from maxq.store import ITransaction

JSON_COLUMNS = {
    "runs": ("input", "output", "error", "metadata"),
    "steps": ("depends_on", "env", "fields", "error"),
    "logs": ("metadata",),
    "stages": (),
    "flow_calls": (),
    "step_deps": (),
}

UPDATABLE = {
    "runs": {
        "status", "name", "description", "input", "output", "error", "metadata",
        "stdout", "stderr", "termination_reason", "started_at", "completed_at",
    },
    "stages": {"status", "final", "fail_fast", "completed_at", "created_at",
               "flow_call_id", "flow_call_interrupted"},
    "steps": {
        "status", "name", "depends_on", "deps_left", "max_retries", "retry_count",
        "retry_delay_ms", "retry_backoff", "timeout_seconds", "env", "fields", "error",
        "exit_code", "queued_at", "started_at", "completed_at", "duration_ms",
        "ready_at", "stdout", "stderr", "worker_id", "termination_reason",
        "interruptions", "pgid",
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
RUNNABLE_STEP = (
    "c.status = 'pending' AND c.deps_left = 0 AND c.ready_at <= ? "
    "AND r.status = 'running'"
)
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
            out[col] = json.dumps(out[col], separators=(",", ":"), allow_nan=False)
    return out


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


@implementer(ITransaction)
class SqlTransaction:
    """
    The primitives.  Subclasses implement C{_execute} and the claims.
    """

    # The column that orders steps by insertion.
    ORDER = "rowid"

    async def _execute(self, sql: str, params=()) -> tuple[list[str], list, int]:
        """
        Run one statement; return C{(column names, rows, rowcount)}.
        """
        raise NotImplementedError

    async def _write(self, sql: str, params=()) -> int | None:
        """
        A statement whose rows nobody reads.  Returns its row count, or None
        on a backend that sends such statements later, together with the
        next one (PostgreSQL): callers must not depend on the count.
        """
        _, _, count = await self._execute(sql, params)
        return count

    async def _rows(self, table: str, sql: str, params=()) -> list[dict]:
        columns, rows, _ = await self._execute(sql, params)
        return [decode(table, columns, r) for r in rows]

    async def _one(self, table: str, sql: str, params=()) -> dict | None:
        rows = await self._rows(table, sql, params)
        return rows[0] if rows else None

    async def _scalar(self, sql: str, params=()):
        _, rows, _ = await self._execute(sql, params)
        return rows[0][0] if rows else None

    async def _insert(self, table: str, row: dict, returning: str | None = None):
        row = encode(table, row)
        cols = list(row)
        sql = (f"INSERT INTO {table} ({','.join(cols)}) "
               f"VALUES ({','.join('?' * len(cols))})")
        if not returning:
            await self._write(sql, [row[c] for c in cols])
            return None
        _, rows, _ = await self._execute(f"{sql} RETURNING {returning}",
                                         [row[c] for c in cols])
        return rows[0][0]

    async def _insert_many(self, table: str, rows: list[dict], suffix: str = "") -> None:
        if not rows:
            return
        encoded = [encode(table, r) for r in rows]
        cols = list(encoded[0])
        one = "(" + ",".join("?" * len(cols)) + ")"
        for chunk in chunks(encoded):
            await self._write(
                f"INSERT INTO {table} ({','.join(cols)}) VALUES "
                f"{','.join([one] * len(chunk))}{suffix}",
                [r[c] for r in chunk for c in cols],
            )

    async def _update(self, table: str, key: dict, columns: dict) -> int | None:
        if not columns:
            return 0
        bad = set(columns) - UPDATABLE[table]
        if bad:
            raise ValueError(f"cannot update {table}.{sorted(bad)}")
        columns = encode(table, columns)
        sets = ", ".join(f"{c} = ?" for c in columns)
        clause, params = where(key)
        return await self._write(f"UPDATE {table} SET {sets}{clause}",
                                 [*columns.values(), *params])

    async def _flow_names(self, rows: list[dict]) -> None:
        """
        Give each claimed row its run's flow name, unless the claim
        statement returned it already (PostgreSQL's joins the run anyway).
        """
        ids = list({r["run_id"] for r in rows if "flow_name" not in r})
        if not ids:
            return
        _, found, _ = await self._execute(
            f"SELECT id, flow_name FROM runs WHERE id IN ({','.join('?' * len(ids))})", ids
        )
        names = dict(found)
        for row in rows:
            if "flow_name" not in row:
                row["flow_name"] = names[row["run_id"]]

    # coordination (no-ops where one process owns the database) --------------

    async def lock_run(self, run_id):
        pass

    async def notify(self, payload: str):
        pass

    # runs -----------------------------------------------------------------

    async def insert_run(self, row):
        await self._insert("runs", row)

    async def get_run(self, run_id):
        return await self._one("runs", "SELECT * FROM runs WHERE id = ?", (run_id,))

    async def get_run_by_idempotency_key(self, key):
        return await self._one("runs", "SELECT * FROM runs WHERE idempotency_key = ?",
                               (key,))

    async def update_run(self, run_id, **columns):
        return await self._update("runs", {"id": run_id}, columns)

    async def list_runs(self, flow_name, status, sort_by, sort_order, limit, offset):
        clause, params = where({"flow_name": flow_name, "status": status})
        total = await self._scalar(f"SELECT count(*) FROM runs{clause}", params)
        col = RUN_SORT[sort_by]
        rows = await self._rows(
            "runs",
            f"SELECT id, flow_name, status, name, description, input, output, error, "
            f"metadata, termination_reason, created_at, started_at, completed_at "
            f"FROM runs{clause} ORDER BY {order_by(col, 'id', sort_order)} "
            f"LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return rows, total

    # stages ---------------------------------------------------------------

    async def insert_stage(self, row):
        seq = await self._scalar(
            "SELECT coalesce(max(seq), 0) + 1 FROM stages WHERE run_id = ?",
            (row["run_id"],),
        )
        await self._insert("stages", {**row, "seq": seq})

    async def get_stage(self, run_id, name):
        return await self._one(
            "stages", "SELECT * FROM stages WHERE run_id = ? AND name = ?", (run_id, name)
        )

    async def list_stages(self, run_id):
        return await self._rows(
            "stages", "SELECT * FROM stages WHERE run_id = ? ORDER BY seq", (run_id,)
        )

    async def update_stage(self, run_id, name, **columns):
        return await self._update("stages", {"run_id": run_id, "name": name}, columns)

    async def last_completed_stage(self, run_id):
        return await self._scalar(
            "SELECT name FROM stages WHERE run_id = ? AND status = 'completed' "
            "ORDER BY completed_at DESC, seq DESC LIMIT 1",
            (run_id,),
        )

    async def count_unfinished_stages(self, run_id):
        return await self._scalar(
            "SELECT count(*) FROM stages WHERE run_id = ? "
            "AND status IN ('pending', 'running')",
            (run_id,),
        )

    # steps ----------------------------------------------------------------

    async def insert_steps(self, run_id, rows, edges):
        await self._insert_many("steps", rows)
        await self._insert_many(
            "step_deps",
            [{"run_id": run_id, "step_id": s, "dep_id": d} for s, d in edges],
            suffix=" ON CONFLICT DO NOTHING",
        )

    async def delete_steps(self, run_id, step_ids):
        for chunk in chunks(list(step_ids)):
            marks = ",".join("?" * len(chunk))
            await self._write(
                f"DELETE FROM step_deps WHERE run_id = ? AND step_id IN ({marks})",
                [run_id, *chunk],
            )
            await self._write(
                f"DELETE FROM steps WHERE run_id = ? AND id IN ({marks})", [run_id, *chunk]
            )

    async def get_step(self, run_id, step_id):
        return await self._one(
            "steps", "SELECT * FROM steps WHERE run_id = ? AND id = ?", (run_id, step_id)
        )

    async def get_step_states(self, run_id, step_ids):
        found = {}
        for chunk in chunks(list(step_ids)):
            marks = ",".join("?" * len(chunk))
            _, rows, _ = await self._execute(
                f"SELECT id, stage, status FROM steps WHERE run_id = ? AND id IN ({marks})",
                [run_id, *chunk],
            )
            for sid, stage, status in rows:
                found[sid] = (stage, status)
        return found

    async def update_step(self, run_id, step_id, **columns):
        return await self._update("steps", {"run_id": run_id, "id": step_id}, columns)

    async def update_steps(self, run_id, step_ids, **columns):
        for chunk in chunks(list(step_ids)):
            await self._update("steps", {"run_id": run_id, "id": chunk}, columns)

    async def record_step_pgid(self, run_id, step_id, claim_no, pgid):
        await self._update("steps", {"run_id": run_id, "id": step_id,
                                     "claim_no": claim_no, "status": "running"},
                           {"pgid": pgid})

    async def record_flow_call_pgid(self, call_id, pgid):
        await self._update("flow_calls", {"id": call_id, "status": "running"},
                           {"pgid": pgid})

    async def list_steps(self, run_id, stage, status, name, sort_by, sort_order, limit,
                         offset):
        clause, params = where(
            {"run_id": run_id, "stage": stage, "status": status, "name": name}
        )
        total = await self._scalar(f"SELECT count(*) FROM steps{clause}", params)
        col = STEP_SORT[sort_by]
        rows = await self._rows(
            "steps",
            f"SELECT run_id, id, stage, name, status, depends_on, retry_count, max_retries, "
            f"env, fields, error, exit_code, created_at, queued_at, started_at, "
            f"completed_at, duration_ms, worker_id, termination_reason, timeout_seconds, "
            f"retry_delay_ms, retry_backoff "
            f"FROM steps{clause} ORDER BY {order_by(col, self.ORDER, sort_order)} "
            f"LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return rows, total

    async def steps_with_status(self, run_id, statuses, stage=None):
        clause, params = where({"run_id": run_id, "status": list(statuses),
                                "stage": stage})
        return await self._rows(
            "steps",
            f"SELECT id, stage, name, status, worker_id, claim_no, error, pgid "
            f"FROM steps{clause} ORDER BY {self.ORDER}",
            params,
        )

    async def running_steps(self, worker_ids=None):
        """
        Every running step of every run, or of the workers C{worker_ids}.
        """
        clause, params = where({"status": "running", "worker_id": worker_ids})
        return await self._rows(
            "steps",
            f"SELECT run_id, id, stage, name, status, worker_id, claim_no, "
            f"interruptions, pgid FROM steps{clause} ORDER BY run_id, {self.ORDER}",
            params,
        )

    async def stage_has_unfinished(self, run_id, stage):
        return await self._scalar(
            "SELECT 1 FROM steps WHERE run_id = ? AND stage = ? "
            "AND status IN ('pending', 'running') LIMIT 1",
            (run_id, stage),
        ) is not None

    async def count_stage_steps(self, run_id, stage):
        _, rows, _ = await self._execute(
            "SELECT status, count(*) FROM steps WHERE run_id = ? AND stage = ? "
            "GROUP BY status",
            (run_id, stage),
        )
        return dict(rows)

    async def dependents_of(self, run_id, step_ids):
        found = []
        for chunk in chunks(list(step_ids)):
            marks = ",".join("?" * len(chunk))
            _, rows, _ = await self._execute(
                f"SELECT DISTINCT step_id FROM step_deps "
                f"WHERE run_id = ? AND dep_id IN ({marks})",
                [run_id, *chunk],
            )
            found.extend(r[0] for r in rows)
        return found

    async def release_dependents(self, run_id, step_id):
        await self._write(
            "UPDATE steps SET deps_left = deps_left - 1 WHERE run_id = ? "
            "AND status = 'pending' "
            "AND id IN (SELECT step_id FROM step_deps WHERE run_id = ? AND dep_id = ?)",
            (run_id, run_id, step_id),
        )

    async def recount_dependencies(self, run_id):
        await self._write(
            "UPDATE steps SET deps_left = ("
            " SELECT count(*) FROM step_deps d JOIN steps p"
            " ON p.run_id = d.run_id AND p.id = d.dep_id"
            " WHERE d.run_id = steps.run_id AND d.step_id = steps.id"
            " AND p.status != 'completed')"
            " WHERE run_id = ? AND status = 'pending'",
            (run_id,),
        )

    # The backend's claim statements, with parameters (worker_id, now, now,
    # limit) and (worker_id, now, limit), returning the claimed rows and, for
    # steps, their insertion order as C{seq}.
    CLAIM_STEPS: str
    CLAIM_FLOW_CALLS: str

    async def claim_steps(self, worker_id, now, limit):
        rows = await self._rows("steps", self.CLAIM_STEPS, (worker_id, now, now, limit))
        await self._flow_names(rows)
        rows.sort(key=lambda r: (r["ready_at"], r["seq"]))
        return rows

    async def get_fields(self, run_id, step_ids):
        params: list = [run_id]
        extra = ""
        if step_ids:
            extra = f" AND id IN ({','.join('?' * len(step_ids))})"
            params.extend(step_ids)
        return await self._rows(
            "steps",
            f"SELECT id, name, stage, status, fields, completed_at FROM steps "
            f"WHERE run_id = ?{extra} ORDER BY {self.ORDER}",
            params,
        )

    # flow invocations -----------------------------------------------------

    async def insert_flow_call(self, run_id, completed_stage, failed_stage, now):
        return await self._insert(
            "flow_calls",
            {
                "run_id": run_id,
                "completed_stage": completed_stage,
                "failed_stage": failed_stage,
                "status": "pending",
                "created_at": now,
            },
            returning="id",
        )

    async def get_flow_call(self, call_id):
        return await self._one("flow_calls", "SELECT * FROM flow_calls WHERE id = ?",
                               (call_id,))

    async def update_flow_call(self, call_id, **columns):
        return await self._update("flow_calls", {"id": call_id}, columns)

    async def open_flow_calls(self, run_id):
        return await self._rows(
            "flow_calls",
            "SELECT * FROM flow_calls WHERE run_id = ? "
            "AND status IN ('pending', 'running') ORDER BY id",
            (run_id,),
        )

    async def flow_calls_with_status(self, run_id, statuses):
        clause, params = where({"run_id": run_id, "status": list(statuses)})
        return await self._rows("flow_calls",
                                f"SELECT * FROM flow_calls{clause} ORDER BY id", params)

    async def running_flow_calls(self, worker_ids=None):
        """
        Every running flow call, or those of the workers C{worker_ids}.
        """
        clause, params = where({"status": "running", "worker_id": worker_ids})
        return await self._rows("flow_calls",
                                f"SELECT * FROM flow_calls{clause} ORDER BY id", params)

    async def claim_flow_calls(self, worker_id, now, limit):
        rows = await self._rows("flow_calls", self.CLAIM_FLOW_CALLS,
                                (worker_id, now, limit))
        await self._flow_names(rows)
        rows.sort(key=lambda r: r["id"])
        return rows

    # logs -----------------------------------------------------------------

    async def insert_log(self, row):
        return await self._insert("logs", row, returning="id")

    async def list_logs(self, run_id, entity_type, entity_id, level, limit, offset):
        clause, params = where(
            {"run_id": run_id, "entity_type": entity_type, "entity_id": entity_id,
             "level": level}
        )
        total = await self._scalar(f"SELECT count(*) FROM logs{clause}", params)
        rows = await self._rows(
            "logs",
            f"SELECT * FROM logs{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return rows, total
