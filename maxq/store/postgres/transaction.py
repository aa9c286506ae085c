"""
L{PostgresTransaction}: one transaction on one pooled connection, batched
into as few round trips as it can be, with the backend's own claim, lock,
notify and heartbeat statements.
"""

from __future__ import annotations

import json

import psycopg2
from zope.interface import implementer

from maxq.store.history import EventProbe
from maxq.store.peers import ISharedTransaction
from maxq.store.postgres.connection import _PooledConnection
from maxq.store.postgres.statements import (
    _PREPARE_AFTER, _PREPARED_PER_CONNECTION, PREPARE, StatementCache, _Statement,
)
from maxq.store.sql import (
    CLAIM_ORDER, CLAIM_STEP_SET, NEXT_FLOW_CALL, RUNNABLE_STEP, SqlTransaction,
    clean_params,
)

CHANNEL = "maxq"
# The engine's locking (lock_run, SKIP LOCKED claims) is designed for READ
# COMMITTED; said explicitly, so that a database default cannot change it.
BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"
COMMIT = "COMMIT"
# Event ids a probe checks past the settled bound at most (a larger burst
# is settled by the next probes, or by its transactions ending).
EVENT_SCAN = 5000
ROLLBACK = "ROLLBACK"


@implementer(ISharedTransaction)
class PostgresTransaction(SqlTransaction):
    """
    One transaction on one pooled connection, sent in as few round trips as
    it can be (see the module's docstring).
    """

    ORDER = "seq"
    LOG_MATCH = "to_tsvector('simple', l.message) @@ plainto_tsquery('simple', ?)"
    OUTPUT_MATCH = "to_tsvector('simple', c.data) @@ plainto_tsquery('simple', ?)"

    @staticmethod
    def match_query(words):
        return " ".join(words)

    # Due deliveries another server is taking are skipped (maxq.store.operations).
    LEASE_LOCK = " FOR UPDATE SKIP LOCKED"
    HAS_REGISTRY = True

    def __init__(self, conn: _PooledConnection, cursor, cache: StatementCache):
        self._conn = conn
        self._cursor = cursor
        # The store's statements (see L{StatementCache}).
        self._cache = cache
        # Statements sent by none of the round trips yet, and their
        # parameters: writes whose result nobody reads.
        self._held: list[_Statement] = []
        self._held_params: list = []
        # BEGIN was sent: the transaction must end with COMMIT or ROLLBACK.
        self.begun = False
        # The first error a statement raised: such a transaction never commits.
        self.error: BaseException | None = None
        # Run the unit again: preparing a statement failed (it is sent as
        # text from now on), or a prepared statement went stale.
        self.replay = False
        self.statements = 0
        self.round_trips = 0

    # how statements travel ------------------------------------------------

    def _hold(self, sql: str, params=()) -> None:
        self._held.append(self._cache.get(sql))
        if params:
            self._held_params.extend(clean_params(params))
        self.statements += 1

    async def _send(self, statement: _Statement | None, params: list, plain: bool,
                    tail: str | None = None):
        """
        One round trip: BEGIN if due, what is held, then C{statement} (or
        the bare C{tail}, COMMIT).
        """
        conn = self._conn
        parts = []
        if conn.deallocate:
            parts.append("DEALLOCATE ALL")
            conn.deallocate = False
        if not self.begun and (self._held or not plain):
            parts.append(BEGIN)
            self.begun = True
        statements = self._held
        if statement is not None:
            statements.append(statement)
        if self._held_params:
            params = self._held_params + params if params else self._held_params
        self._held = []
        self._held_params = []
        prepared = conn.prepared
        new: dict[str, _Statement] = {}
        executes = False
        for st in statements:
            if st.name in prepared or st.name in new:
                parts.append(st.execute)
                executes = True
            elif (PREPARE and st.preparable and st.uses >= _PREPARE_AFTER
                  and len(prepared) + len(new) < _PREPARED_PER_CONNECTION):
                parts.append(st.prepare)
                parts.append(st.execute)
                new[st.name] = st
            else:
                parts.append(st.text)
            st.uses += 1
        if tail is not None:
            parts.append(tail)
        text = parts[0] if len(parts) == 1 else "; ".join(parts)
        self.round_trips += 1
        try:
            await conn.query(self._cursor, text, params)
        except psycopg2.Error as e:
            if self.error is None:
                self.error = e
            if new or (executes and e.pgcode == "0A000"):
                # Which of this round trip's PREPAREs ran is unknown (they
                # outlive a rollback), and a cached plan may be stale (a
                # migration changed a table): start afresh.
                prepared.clear()
                conn.deallocate = True
                if e.pgcode is not None and (e.pgcode.startswith("42")
                                             or e.pgcode == "0A000"):
                    for st in new.values():
                        st.preparable = False
                    self.replay = True
            raise
        except BaseException as e:
            if self.error is None:
                self.error = e
            raise
        prepared.update(new)
        return self._cursor

    async def _execute(self, sql, params=()):
        statement = self._cache.get(sql)
        self.statements += 1
        cur = await self._send(statement, clean_params(params), statement.plain)
        description = cur.description
        if description is None:
            return [], [], cur.rowcount
        return [d[0] for d in description], cur.fetchall(), cur.rowcount

    async def commit(self) -> None:
        """
        Send what is held with the C{COMMIT} (one round trip), or nothing at
        all when the transaction only read.
        """
        if self.error is not None:
            # A statement failed and the unit went on regardless: PostgreSQL
            # would answer COMMIT with a silent ROLLBACK.
            raise self.error
        if self._held or self.begun:
            self.statements += 1
            await self._send(None, [], False, tail=COMMIT)
            self.begun = False

    async def rollback(self) -> None:
        self._held = []
        self._held_params = []
        conn = self._conn
        if self.begun or conn.deallocate:
            text = ROLLBACK if self.begun else ""
            if conn.deallocate:
                text = f"{text}; DEALLOCATE ALL" if text else "DEALLOCATE ALL"
            self.round_trips += 1
            await conn.query(self._cursor, text, [])
            conn.deallocate = False
            self.begun = False

    # writes whose result nobody reads: held ---------------------------------

    async def _write(self, sql: str, params=()) -> None:
        """
        Held: sent in front of the next statement or with the COMMIT, so
        the row count is not known (the shared primitives never read it).
        """
        self._hold(sql, params)
        return None

    async def lock_run(self, run_id):
        # Held like a write: it is sent, after BEGIN, in front of the next
        # statement, which therefore runs with the lock taken.
        self._hold("SELECT 1 FROM runs WHERE id = ? FOR UPDATE", (run_id,))

    async def notify(self, payload: str):
        """
        Wake the other servers when this transaction commits; sent with the
        COMMIT.  Only if another server is registered: one that registers
        later has started listening before it registered and makes its first
        claims after, so it misses at most what the polling brings a moment
        later.
        """
        sender = None
        try:
            message = json.loads(payload)
            if isinstance(message, dict) and isinstance(message.get("from"), str):
                sender = message["from"]
        except ValueError:
            pass
        if sender is None:
            self._hold("SELECT pg_notify(?, ?)", (CHANNEL, payload))
        else:
            self._hold("SELECT pg_notify(?, ?) "
                       "WHERE EXISTS (SELECT 1 FROM workers WHERE id <> ?)",
                       (CHANNEL, payload, sender))

    async def _before_event_ids(self):
        """
        The transaction takes its xid before it draws event ids (held: it
        travels with the insert), so that a transaction holding an id is
        always among the in-progress ones of a later snapshot until it
        ends; L{event_probe} relies on it.
        """
        self._hold("SELECT pg_current_xact_id()")

    async def event_probe(self, settled):
        """
        Event ids come from a plain identity, so they may commit out of
        order (a transaction draws 9, another draws 10 and commits first).
        Readers therefore stop at a settled bound (L{maxq.streams.EventHub}),
        and this is what moves it: the highest id drawn, read first; then,
        in a later statement (a later snapshot), the transactions in
        progress and the first id above C{settled} no committed row holds.
        Any transaction holding an id up to C{last} had its xid before that
        first read (L{_before_event_ids}), so it is either committed (its
        rows are seen) or among those in progress: once they have all
        ended, every id up to C{last} is final.
        """
        last = int(await self._scalar(
            "SELECT coalesce(pg_sequence_last_value("
            "pg_get_serial_sequence('events', 'id')::regclass), 0)") or 0)
        through = last if settled is None else min(last, settled + EVENT_SCAN)
        _, rows, _ = await self._execute(
            "SELECT pg_current_snapshot()::text, "
            "(SELECT min(g) FROM generate_series(CAST(? AS BIGINT) + 1, CAST(? AS BIGINT)) g "
            " WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = g))",
            (settled if settled is not None else last, through))
        snapshot, first_missing = rows[0]
        xip = snapshot.split(":")[2]
        in_progress = frozenset(int(x) for x in xip.split(",") if x)
        return EventProbe(last, in_progress,
                          None if first_missing is None else int(first_missing), through)

    # claims: one statement each, the run's flow name included ---------------

    # Rows another server has locked are skipped, never waited for; a run
    # whose row is locked (a transaction is deciding about it) is skipped
    # this time too, so a claim can never deadlock with such a transaction.
    CLAIM_STEPS = (
        f"UPDATE steps s SET {CLAIM_STEP_SET} "
        "FROM ("
        " SELECT c.run_id, c.id, r.flow_name FROM steps c JOIN runs r ON r.id = c.run_id"
        f" WHERE {RUNNABLE_STEP} ORDER BY {CLAIM_ORDER}, c.seq LIMIT ?"
        " FOR UPDATE OF c SKIP LOCKED FOR SHARE OF r SKIP LOCKED) picked "
        "WHERE s.run_id = picked.run_id AND s.id = picked.id "
        "RETURNING s.run_id, s.id, s.stage, s.name, s.env, s.retry_count, "
        "s.claim_no, s.timeout_seconds, s.ready_at, s.priority, s.inputs, s.seq, "
        "picked.flow_name"
    )
    # The run's row is locked with its call: the claimer then starts the run.
    CLAIM_FLOW_CALLS = (
        "UPDATE flow_calls f SET status = 'running', worker_id = ?, started_at = ? "
        "FROM ("
        " SELECT c.id, r.flow_name, r.trigger, r.scheduled_at"
        " FROM flow_calls c JOIN runs r ON r.id = c.run_id"
        f" WHERE {NEXT_FLOW_CALL} ORDER BY c.id LIMIT ?"
        " FOR UPDATE OF c, r SKIP LOCKED) picked "
        "WHERE f.id = picked.id RETURNING f.*, picked.flow_name, picked.trigger, "
        "picked.scheduled_at"
    )

    # A schedule another server is firing is skipped, not waited for.
    LOCK_SCHEDULE = "SELECT * FROM schedules WHERE flow_name = ? FOR UPDATE SKIP LOCKED"
    WAIT_SCHEDULE = "SELECT * FROM schedules WHERE flow_name = ? FOR UPDATE"
    WAIT_BACKFILL = "SELECT * FROM backfills WHERE id = ? FOR UPDATE"

    # flow control (maxq.store.limits): candidates skipped when another
    # server holds them, limit rows waited for in the fixed order.
    LOCK_CANDIDATES = " FOR UPDATE OF c SKIP LOCKED FOR SHARE OF r SKIP LOCKED"
    LOCK_PENDING_RUNS = " FOR UPDATE OF r SKIP LOCKED"
    LOCK_LIMITS = " FOR UPDATE"
    STEPS_FIRST = "JOIN"

    async def live_worker_labels(self):
        _, rows, _ = await self._execute("SELECT labels FROM workers")
        return [set(json.loads(r[0] or "[]")) for r in rows]

    # the registry of servers --------------------------------------------------

    async def heartbeat(self, worker_id, timeout_ms, labels=()):
        """
        Record that C{worker_id} is alive and take the dead ones out of the
        registry; fires with their ids (each reported to one server only).
        Times come from the database's clock, shared by every server.
        """
        now_sql = "(extract(epoch from clock_timestamp()) * 1000)::bigint"
        self._hold(
            f"INSERT INTO workers (id, started_at, heartbeat_at, labels) "
            f"VALUES (?, {now_sql}, {now_sql}, ?) "
            f"ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, "
            f"labels = EXCLUDED.labels",
            (worker_id, json.dumps(sorted(labels))),
        )
        _, rows, _ = await self._execute(
            f"DELETE FROM workers WHERE heartbeat_at < {now_sql} - ? RETURNING id",
            (timeout_ms,),
        )
        dead = [r[0] for r in rows]
        # Work held by a server that never registered (or was already
        # removed) is orphaned just the same.
        _, rows, _ = await self._execute(
            "SELECT DISTINCT worker_id FROM steps WHERE status = 'running' "
            "AND worker_id IS NOT NULL AND worker_id NOT IN (SELECT id FROM workers) "
            "UNION SELECT DISTINCT worker_id FROM flow_calls WHERE status = 'running' "
            "AND worker_id IS NOT NULL AND worker_id NOT IN (SELECT id FROM workers)",
        )
        return sorted(set(dead) | {r[0] for r in rows} - {worker_id})

    async def remove_worker(self, worker_id):
        self._hold("DELETE FROM workers WHERE id = ?", (worker_id,))
