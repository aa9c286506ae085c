"""
The embedded SQLite backend.

Statements run inline on the reactor thread: they are small and indexed
(about 10-15 microseconds each, STACK.md §3), far cheaper than handing them
to a thread.  What could block is kept off the reactor: WAL checkpoints run
in a thread on their own connection, and lock waits are bounded by a short
busy timeout, past which the request is refused with a 503 instead of
stalling the server.

A transaction is one C{BEGIN IMMEDIATE ... COMMIT} in one reactor turn: the
engine's coroutine is driven to completion synchronously, and a coroutine
that awaits anything but this store is rolled back as a programming error.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from zope.interface import implementer

from maxq.errors import StoreUnavailable
from maxq.store import IStore, ITransaction
from maxq.store.migrations import migrate_sqlite

_JSON_COLUMNS = {
    "runs": ("input", "output", "error", "metadata"),
    "steps": ("depends_on", "env", "fields", "error"),
    "logs": ("metadata",),
    "stages": (),
    "flow_calls": (),
}

_UPDATABLE = {
    "runs": {
        "status", "name", "description", "input", "output", "error", "metadata",
        "stdout", "stderr", "termination_reason", "started_at", "completed_at",
    },
    "stages": {"status", "final", "fail_fast", "completed_at", "created_at"},
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

_RUN_SORT = {"createdAt": "created_at", "startedAt": "started_at",
             "completedAt": "completed_at"}
_STEP_SORT = {"createdAt": "created_at", "startedAt": "started_at",
              "completedAt": "completed_at", "id": "id", "name": "name"}

# Bounded so a lock held by another process stalls the reactor briefly at
# worst; the caller gets StoreUnavailable (503) and may retry.
BUSY_TIMEOUT_MS = 100
CHECKPOINT_INTERVAL_S = 1.0


def _encode(table: str, row: dict) -> dict:
    out = dict(row)
    for col in _JSON_COLUMNS[table]:
        if col in out and out[col] is not None:
            out[col] = json.dumps(out[col], separators=(",", ":"))
    return out


def _decoder(table: str):
    cols = _JSON_COLUMNS[table]

    def decode(cursor, raw):
        row = {d[0]: v for d, v in zip(cursor.description, raw)}
        for col in cols:
            value = row.get(col)
            if value is not None:
                row[col] = json.loads(value)
        return row

    return decode


class _NotSynchronous(Exception):
    """
    A transaction function awaited something that was not this store.
    """


@implementer(IStore)
class SqliteStore:
    log = Logger()
    backend = "sqlite"

    def __init__(self, path: Path | str, reactor):
        self.path = str(path)
        self.reactor = reactor
        self.conn: sqlite3.Connection | None = None
        self.schema_version = 0
        self._in_transaction = False
        self._checkpointer: task.LoopingCall | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        # The checkpoint running in a thread, if any: stop() waits for it
        # before closing the connection it uses.
        self._checkpointing: defer.Deferred | None = None

    # lifecycle ------------------------------------------------------------

    def start(self):
        try:
            self._open()
        except Exception:
            return defer.fail()
        if self.path != ":memory:":
            self._checkpointer = task.LoopingCall(self._checkpoint)
            self._checkpointer.clock = self.reactor
            self._checkpointer.start(CHECKPOINT_INTERVAL_S, now=False).addErrback(
                lambda f: self.log.failure("checkpoint loop stopped", f)
            )
        return defer.succeed(self)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Checkpoints happen in a thread (see _checkpoint), never inline.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        self.schema_version = migrate_sqlite(conn)
        self.conn = conn

    def _checkpoint(self):
        d = threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self._thd_checkpoint
        )
        d.addErrback(lambda f: self.log.failure("WAL checkpoint failed", f))
        self._checkpointing = d

        def done(_):
            self._checkpointing = None

        d.addCallback(done)
        return d

    def _thd_checkpoint(self) -> None:
        if self._checkpoint_conn is None:
            self._checkpoint_conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            self._checkpoint_conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @defer.inlineCallbacks
    def stop(self):
        if self._checkpointer is not None and self._checkpointer.running:
            self._checkpointer.stop()
        if self._checkpointing is not None:
            yield self._checkpointing
        if self._checkpointer is not None:
            self._checkpointer = None
            yield threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), self._thd_close_checkpointer
            )
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _thd_close_checkpointer(self) -> None:
        if self._checkpoint_conn is not None:
            try:
                self._checkpoint_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._checkpoint_conn.close()
            self._checkpoint_conn = None

    def ping(self):
        try:
            self.conn.execute("SELECT 1").fetchone()
        except Exception:
            return defer.succeed(False)
        return defer.succeed(True)

    # units of work --------------------------------------------------------

    def transaction(self, fn, *args, **kwargs):
        return self._run(True, fn, args, kwargs)

    def read(self, fn, *args, **kwargs):
        return self._run(False, fn, args, kwargs)

    def _run(self, write: bool, fn, args, kwargs):
        if self.conn is None:
            return defer.fail(StoreUnavailable("the database is closed"))
        if self._in_transaction:
            return defer.fail(RuntimeError("nested SQLite transaction"))
        self._in_transaction = True
        conn = self.conn
        try:
            if write:
                conn.execute("BEGIN IMMEDIATE")
            coro = fn(SqliteTransaction(conn), *args, **kwargs)
            try:
                coro.send(None)
            except StopIteration as done:
                if write:
                    conn.execute("COMMIT")
                return defer.succeed(done.value)
            coro.close()
            raise _NotSynchronous(f"{fn!r} awaited something other than the store")
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.OperationalError) and _is_busy(e):
                return defer.fail(StoreUnavailable(f"database busy: {e}"))
            if isinstance(e, sqlite3.OperationalError) and "disk" in str(e):
                return defer.fail(StoreUnavailable(f"database write failed: {e}"))
            return defer.fail()
        finally:
            self._in_transaction = False


def _is_busy(e: Exception) -> bool:
    text = str(e)
    return "locked" in text or "busy" in text


def _where(conditions: dict[str, Any]) -> tuple[str, list]:
    parts, params = [], []
    for col, value in conditions.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            value = list(value)
            parts.append(f"{col} IN ({','.join('?' * len(value))})")
            params.extend(value)
        else:
            parts.append(f"{col} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


def _chunks(items: list, size: int = 500):
    for i in range(0, len(items), size):
        yield items[i:i + size]


@implementer(ITransaction)
class SqliteTransaction:
    """
    The primitives, as coroutines that never suspend.
    """

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def _query(self, table: str, sql: str, params=()) -> list[dict]:
        cur = self.conn.cursor()
        cur.row_factory = _decoder(table)
        return cur.execute(sql, params).fetchall()

    def _one(self, table: str, sql: str, params=()) -> dict | None:
        rows = self._query(table, sql, params)
        return rows[0] if rows else None

    def _insert(self, table: str, row: dict) -> int:
        row = _encode(table, row)
        cols = list(row)
        cur = self.conn.execute(
            f"INSERT INTO {table} ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
            [row[c] for c in cols],
        )
        return cur.lastrowid

    def _update(self, table: str, key: dict, columns: dict) -> int:
        if not columns:
            return 0
        bad = set(columns) - _UPDATABLE[table]
        if bad:
            raise ValueError(f"cannot update {table}.{sorted(bad)}")
        columns = _encode(table, columns)
        sets = ", ".join(f"{c} = ?" for c in columns)
        where, params = _where(key)
        cur = self.conn.execute(
            f"UPDATE {table} SET {sets}{where}", [*columns.values(), *params]
        )
        return cur.rowcount

    # runs -----------------------------------------------------------------

    async def insert_run(self, row):
        self._insert("runs", row)

    async def get_run(self, run_id):
        return self._one("runs", "SELECT * FROM runs WHERE id = ?", (run_id,))

    async def get_run_by_idempotency_key(self, key):
        return self._one("runs", "SELECT * FROM runs WHERE idempotency_key = ?", (key,))

    async def update_run(self, run_id, **columns):
        return self._update("runs", {"id": run_id}, columns)

    async def list_runs(self, flow_name, status, sort_by, sort_order, limit, offset):
        where, params = _where({"flow_name": flow_name, "status": status})
        total = self.conn.execute(f"SELECT count(*) FROM runs{where}", params).fetchone()[0]
        col = _RUN_SORT[sort_by]
        order = "DESC" if sort_order == "desc" else "ASC"
        rows = self._query(
            "runs",
            f"SELECT id, flow_name, status, name, description, input, output, error, "
            f"metadata, termination_reason, created_at, started_at, completed_at "
            f"FROM runs{where} ORDER BY {col} {order}, id {order} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return rows, total

    # stages ---------------------------------------------------------------

    async def insert_stage(self, row):
        seq = self.conn.execute(
            "SELECT coalesce(max(seq), 0) + 1 FROM stages WHERE run_id = ?",
            (row["run_id"],),
        ).fetchone()[0]
        self._insert("stages", {**row, "seq": seq})

    async def get_stage(self, run_id, name):
        return self._one(
            "stages", "SELECT * FROM stages WHERE run_id = ? AND name = ?", (run_id, name)
        )

    async def list_stages(self, run_id):
        return self._query(
            "stages", "SELECT * FROM stages WHERE run_id = ? ORDER BY seq", (run_id,)
        )

    async def update_stage(self, run_id, name, **columns):
        return self._update("stages", {"run_id": run_id, "name": name}, columns)

    async def last_completed_stage(self, run_id):
        row = self.conn.execute(
            "SELECT name FROM stages WHERE run_id = ? AND status = 'completed' "
            "ORDER BY completed_at DESC, seq DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return row[0] if row else None

    async def count_unfinished_stages(self, run_id):
        return self.conn.execute(
            "SELECT count(*) FROM stages WHERE run_id = ? AND status IN ('pending','running')",
            (run_id,),
        ).fetchone()[0]

    # steps ----------------------------------------------------------------

    async def insert_steps(self, run_id, rows, edges):
        if rows:
            encoded = [_encode("steps", r) for r in rows]
            cols = list(encoded[0])
            self.conn.executemany(
                f"INSERT INTO steps ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                [[r[c] for c in cols] for r in encoded],
            )
        if edges:
            self.conn.executemany(
                "INSERT OR IGNORE INTO step_deps (run_id, step_id, dep_id) VALUES (?, ?, ?)",
                [(run_id, s, d) for s, d in edges],
            )

    async def delete_steps(self, run_id, step_ids):
        for chunk in _chunks(list(step_ids)):
            marks = ",".join("?" * len(chunk))
            self.conn.execute(
                f"DELETE FROM step_deps WHERE run_id = ? AND step_id IN ({marks})",
                [run_id, *chunk],
            )
            self.conn.execute(
                f"DELETE FROM steps WHERE run_id = ? AND id IN ({marks})", [run_id, *chunk]
            )

    async def get_step(self, run_id, step_id):
        return self._one(
            "steps", "SELECT * FROM steps WHERE run_id = ? AND id = ?", (run_id, step_id)
        )

    async def get_step_states(self, run_id, step_ids):
        found = {}
        for chunk in _chunks(list(step_ids)):
            marks = ",".join("?" * len(chunk))
            for sid, stage, status in self.conn.execute(
                f"SELECT id, stage, status FROM steps WHERE run_id = ? AND id IN ({marks})",
                [run_id, *chunk],
            ):
                found[sid] = (stage, status)
        return found

    async def update_step(self, run_id, step_id, **columns):
        return self._update("steps", {"run_id": run_id, "id": step_id}, columns)

    async def update_steps(self, run_id, step_ids, **columns):
        count = 0
        for chunk in _chunks(list(step_ids)):
            count += self._update("steps", {"run_id": run_id, "id": chunk}, columns)
        return count

    async def list_steps(self, run_id, stage, status, name, sort_by, sort_order, limit, offset):
        where, params = _where(
            {"run_id": run_id, "stage": stage, "status": status, "name": name}
        )
        total = self.conn.execute(f"SELECT count(*) FROM steps{where}", params).fetchone()[0]
        col = _STEP_SORT[sort_by]
        order = "DESC" if sort_order == "desc" else "ASC"
        rows = self._query(
            "steps",
            f"SELECT run_id, id, stage, name, status, depends_on, retry_count, max_retries, "
            f"env, fields, error, exit_code, created_at, queued_at, started_at, "
            f"completed_at, duration_ms, worker_id, termination_reason, timeout_seconds, "
            f"retry_delay_ms, retry_backoff "
            f"FROM steps{where} ORDER BY {col} {order}, rowid {order} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return rows, total

    async def steps_with_status(self, run_id, statuses, stage=None):
        where, params = _where({"run_id": run_id, "status": list(statuses), "stage": stage})
        return self._query(
            "steps",
            f"SELECT id, stage, name, status, worker_id, claim_no, error, pgid "
            f"FROM steps{where} ORDER BY rowid",
            params,
        )

    async def stage_has_unfinished(self, run_id, stage):
        return self.conn.execute(
            "SELECT 1 FROM steps WHERE run_id = ? AND stage = ? "
            "AND status IN ('pending', 'running') LIMIT 1",
            (run_id, stage),
        ).fetchone() is not None

    async def count_stage_steps(self, run_id, stage):
        return dict(
            self.conn.execute(
                "SELECT status, count(*) FROM steps WHERE run_id = ? AND stage = ? "
                "GROUP BY status",
                (run_id, stage),
            ).fetchall()
        )

    async def dependents_of(self, run_id, step_ids):
        found = []
        for chunk in _chunks(list(step_ids)):
            marks = ",".join("?" * len(chunk))
            found.extend(
                r[0]
                for r in self.conn.execute(
                    f"SELECT DISTINCT step_id FROM step_deps "
                    f"WHERE run_id = ? AND dep_id IN ({marks})",
                    [run_id, *chunk],
                )
            )
        return found

    async def release_dependents(self, run_id, step_id):
        self.conn.execute(
            "UPDATE steps SET deps_left = deps_left - 1 WHERE run_id = ? AND status = 'pending' "
            "AND id IN (SELECT step_id FROM step_deps WHERE run_id = ? AND dep_id = ?)",
            (run_id, run_id, step_id),
        )

    async def recount_dependencies(self, run_id):
        self.conn.execute(
            "UPDATE steps SET deps_left = ("
            " SELECT count(*) FROM step_deps d JOIN steps p"
            " ON p.run_id = d.run_id AND p.id = d.dep_id"
            " WHERE d.run_id = steps.run_id AND d.step_id = steps.id"
            " AND p.status != 'completed')"
            " WHERE run_id = ? AND status = 'pending'",
            (run_id,),
        )

    async def claim_steps(self, worker_id, now, limit):
        rows = self._query(
            "steps",
            "UPDATE steps SET status = 'running', worker_id = ?, started_at = ?, "
            "claim_no = claim_no + 1, completed_at = NULL, duration_ms = NULL, "
            "exit_code = NULL, error = NULL, termination_reason = NULL "
            "WHERE rowid IN ("
            " SELECT s.rowid FROM steps s JOIN runs r ON r.id = s.run_id"
            " WHERE s.status = 'pending' AND s.deps_left = 0 AND s.ready_at <= ?"
            " AND r.status = 'running'"
            " ORDER BY s.ready_at, s.rowid LIMIT ?) "
            "RETURNING run_id, id, stage, name, env, retry_count, claim_no, "
            "timeout_seconds, ready_at",
            (worker_id, now, now, limit),
        )
        if rows:
            flows = dict(
                self.conn.execute(
                    f"SELECT id, flow_name FROM runs WHERE id IN "
                    f"({','.join('?' * len({r['run_id'] for r in rows}))})",
                    list({r["run_id"] for r in rows}),
                ).fetchall()
            )
            for row in rows:
                row["flow_name"] = flows[row["run_id"]]
            rows.sort(key=lambda r: r["ready_at"])
        return rows

    async def get_fields(self, run_id, step_ids):
        params: list = [run_id]
        extra = ""
        if step_ids:
            extra = f" AND id IN ({','.join('?' * len(step_ids))})"
            params.extend(step_ids)
        return self._query(
            "steps",
            f"SELECT id, name, stage, status, fields, completed_at FROM steps "
            f"WHERE run_id = ?{extra} ORDER BY rowid",
            params,
        )

    # flow invocations -----------------------------------------------------

    async def insert_flow_call(self, run_id, completed_stage, failed_stage, now):
        return self._insert(
            "flow_calls",
            {
                "run_id": run_id,
                "completed_stage": completed_stage,
                "failed_stage": failed_stage,
                "status": "pending",
                "created_at": now,
            },
        )

    async def get_flow_call(self, call_id):
        return self._one("flow_calls", "SELECT * FROM flow_calls WHERE id = ?", (call_id,))

    async def update_flow_call(self, call_id, **columns):
        return self._update("flow_calls", {"id": call_id}, columns)

    async def open_flow_calls(self, run_id):
        return self._query(
            "flow_calls",
            "SELECT * FROM flow_calls WHERE run_id = ? AND status IN ('pending','running') "
            "ORDER BY id",
            (run_id,),
        )

    async def flow_calls_with_status(self, run_id, statuses):
        where, params = _where({"run_id": run_id, "status": list(statuses)})
        return self._query("flow_calls", f"SELECT * FROM flow_calls{where} ORDER BY id", params)

    async def claim_flow_calls(self, worker_id, now, limit):
        rows = self._query(
            "flow_calls",
            "UPDATE flow_calls SET status = 'running', worker_id = ?, started_at = ? "
            "WHERE id IN ("
            " SELECT c.id FROM flow_calls c JOIN runs r ON r.id = c.run_id"
            " WHERE c.status = 'pending' AND r.status IN ('pending', 'running')"
            " AND c.id = (SELECT min(o.id) FROM flow_calls o"
            "             WHERE o.run_id = c.run_id AND o.status IN ('pending','running'))"
            " ORDER BY c.id LIMIT ?) "
            "RETURNING *",
            (worker_id, now, limit),
        )
        if rows:
            ids = list({r["run_id"] for r in rows})
            flows = dict(
                self.conn.execute(
                    f"SELECT id, flow_name FROM runs WHERE id IN ({','.join('?' * len(ids))})",
                    ids,
                ).fetchall()
            )
            for row in rows:
                row["flow_name"] = flows[row["run_id"]]
            rows.sort(key=lambda r: r["id"])
        return rows

    # logs -----------------------------------------------------------------

    async def insert_log(self, row):
        return self._insert("logs", row)

    async def list_logs(self, run_id, entity_type, entity_id, level, limit, offset):
        where, params = _where(
            {"run_id": run_id, "entity_type": entity_type, "entity_id": entity_id,
             "level": level}
        )
        total = self.conn.execute(f"SELECT count(*) FROM logs{where}", params).fetchone()[0]
        rows = self._query(
            "logs",
            f"SELECT * FROM logs{where} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return rows, total
