"""
The store's primitives, written once in the SQL that SQLite and PostgreSQL
share.  A backend subclasses L{SqlTransaction} and supplies how a statement
runs (L{SqlTransaction._execute}) and the few statements that differ:
claiming, locking a run, and waking other servers.

Statements use C{?} placeholders; a backend that wants another style
rewrites them once per statement text.
"""

from __future__ import annotations

from zope.interface import implementer

from maxq.store import ITransaction
from maxq.store.columns import (
    CLAIM_ORDER, CLAIM_STEP_SET, NEXT_FLOW_CALL, RUNNABLE_STEP, UPDATABLE,
    chunks, clean_params, decode, encode, where,
)
from maxq.store.schedules import SchedulePrimitives
from maxq.store.operations import OperationsPrimitives
from maxq.store.limits import CLAIMED_STEP, LimitPrimitives
from maxq.store.history import EventPrimitives, OutputPrimitives, SearchPrimitives
from maxq.store.listing import RunListing
from maxq.store.work import FlowCallPrimitives, StepPrimitives

# The backends import the shared claim pieces and clean_params from here.
__all__ = [
    "CLAIM_ORDER", "CLAIM_STEP_SET", "CLAIMED_STEP", "NEXT_FLOW_CALL", "RUNNABLE_STEP",
    "SqlTransaction", "clean_params",
]


@implementer(ITransaction)
class SqlTransaction(RunListing, StepPrimitives, FlowCallPrimitives, SchedulePrimitives,
                     OperationsPrimitives, LimitPrimitives, EventPrimitives,
                     OutputPrimitives, SearchPrimitives):
    """
    The primitives (those of steps and flow calls come from
    L{maxq.store.work}).  Subclasses implement C{_execute} and the claims.
    """

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
        # A column that is None in every row is left to its default, which
        # is NULL for every nullable column (tests/test_store.py keeps the
        # schemas so): most steps leave the §6 columns empty.
        cols = [c for c in encoded[0] if any(r[c] is not None for r in encoded)]
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

    async def _page(self, table: str, columns: str, conditions: dict, order: str,
                    page) -> tuple[list[dict], int]:
        """
        One page of a listing and the total it is a page of: C{(rows, total)}.
        """
        clause, params = where(conditions)
        total = await self._scalar(f"SELECT count(*) FROM {table}{clause}", params)
        rows = await self._rows(
            table,
            f"SELECT {columns} FROM {table}{clause} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, page.limit, page.offset],
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

    # logs -----------------------------------------------------------------

    async def insert_log(self, row):
        return await self._insert("logs", row, returning="id")

    async def list_logs(self, run_id, page, entity_type=None, entity_id=None, level=None):
        return await self._page(
            "logs", "*",
            {"run_id": run_id, "entity_type": entity_type, "entity_id": entity_id,
             "level": level},
            "id DESC", page,
        )
