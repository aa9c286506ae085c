"""
The PostgreSQL backend, through txpostgres (psycopg2's asynchronous mode,
no threads).

Several MaxQ servers may share one database; PostgreSQL is what
coordinates them:

- claims are single statements with C{FOR UPDATE SKIP LOCKED}, so servers
  never wait on each other and no step or flow call is claimed twice;
- every transaction that changes a run first locks the run's row
  (L{PostgresTransaction.lock_run}), so the decisions that must happen once
  (a stage ends, a callback is queued, a run completes) are taken by exactly
  one transaction even when a run's last two steps finish on two servers in
  the same millisecond;
- C{NOTIFY maxq} wakes the other servers' schedulers and carries abort and
  pause orders to whichever server runs the processes; a lost notification
  costs only latency, since every server still polls.  A server that is the
  only one registered sends none (decided in SQL, in the transaction that
  would send it: see L{PostgresTransaction.notify}).

Round trips are what a transaction costs here (the server's reactor does
the Python work of each), so a transaction sends as few as it can, each one
simple query that may carry several statements (psycopg2 interpolates
parameters on the client):

- C{BEGIN} travels with the transaction's first statement that writes or
  locks; plain reads before it run on their own, which under READ COMMITTED
  (every statement takes a fresh snapshot, plain reads take no row locks)
  is exactly what they would see inside the transaction; a transaction
  that only reads sends neither C{BEGIN} nor C{COMMIT};
- writes whose result nobody reads (the shared primitives' C{_write}:
  updates, deletes, inserts without C{RETURNING}; and C{lock_run},
  C{NOTIFY}) are held and sent, in order, in front of the next
  statement whose result is needed, or with the C{COMMIT}.  Their errors
  (a unique violation, a deadlock) therefore surface one call later, still
  inside the transaction, which is rolled back and retried as before.  The
  C{update_*} primitives return None here, not a row count.

- a statement used more than once is prepared on each connection (parsed
  and planned once, then sent as C{EXECUTE}); a PREPARE that fails, or a
  plan made stale by a migration, drops the connection's prepared
  statements and runs the unit again.

txpostgres does not reconnect by itself: each pooled connection and the
LISTEN connection carry a C{DeadConnectionDetector}, and LISTEN is issued
again after every reconnection.  While the database is away, calls fail at
once with L{StoreUnavailable} (the API answers 503).  A deadlock or a
serialization failure is not a lost connection: the unit is run again.
The pooled connections run their statements through a lean path of their
own (L{_PooledConnection.query}): the socket stays watched by the reactor
and a result is delivered as soon as it is read, without txpostgres'
per-query cursor wrapper, lock and extra reactor turn.  The pool opens
more connections (up to L{POOL_MAX}) while units queue for one: a unit
waiting for a run's lock holds its connection meanwhile.
"""

from __future__ import annotations

import json
import os
from collections import deque
from urllib.parse import urlsplit

import psycopg2
from psycopg2 import extensions as _pgext
from twisted.internet import defer
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres
from zope.interface import implementer

from maxq.errors import StoreUnavailable
from maxq.store import IStore
from maxq.store.migrations import migrations
from maxq.store.peers import ISharedTransaction, SharedPeers
from maxq.store.sql import (
    CLAIM_STEP_SET, NEXT_FLOW_CALL, RUNNABLE_STEP, SqlTransaction, clean_params,
)

CHANNEL = "maxq"
# Connections opened at start, and at most, per server.
POOL_SIZE = 4
POOL_MAX = 10
# Any 64-bit number; all MaxQ servers must agree on it.
MIGRATION_LOCK = 0x6D6178715F6D6967
# A transaction that loses a race is run again: a deadlock, a serialization
# failure, or a unique violation (two servers inserting the same key at
# once; the engine checks for duplicates first, so on the second try it
# sees the winner's row and takes the ordinary path).
RETRIES = 5
_RETRYABLE_SQLSTATES = {"40001", "40P01", "23505"}
# The engine's locking (lock_run, SKIP LOCKED claims) is designed for READ
# COMMITTED; said explicitly, so that a database default cannot change it.
BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"


def _dsn(url: str) -> str:
    """
    psycopg2 takes the URL as is; this only normalises the C{postgres://}
    spelling.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    return url


def _describe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


class _Statement:
    """
    One statement text, as psycopg2 sends it, and as a prepared statement.
    """

    __slots__ = ("text", "plain", "name", "prepare", "execute", "preparable", "uses")

    def __init__(self, sql: str, number: int):
        upper = sql.upper()
        # A plain read: a SELECT that locks nothing and changes nothing,
        # which may run before the transaction's BEGIN.
        self.plain = (upper.lstrip().startswith("SELECT")
                      and not any(word in upper for word in _NOT_PLAIN))
        # Shared statements use ?; psycopg2 wants %s (and a literal % doubled).
        self.text = sql.replace("%", "%%").replace("?", "%s")
        count = sql.count("?")
        self.name = f"maxq_{number}"
        self.preparable = (count <= _PREPARE_MAX_PARAMS and len(sql) <= 8000
                           and upper.lstrip().startswith(_PREPARABLE))
        self.prepare = self.execute = ""
        if self.preparable:
            pieces = sql.replace("%", "%%").split("?")
            dollar = pieces[0] + "".join(f"${i}{piece}"
                                         for i, piece in enumerate(pieces[1:], 1))
            self.prepare = f"PREPARE {self.name} AS {dollar}"
            self.execute = (f"EXECUTE {self.name}({', '.join(['%s'] * count)})"
                            if count else f"EXECUTE {self.name}")
        self.uses = 0


_statements: dict[str, _Statement] = {}
_STATEMENT_CACHE = 4096
_NOT_PLAIN = (" FOR UPDATE", " FOR SHARE", " FOR NO KEY", " FOR KEY", "PG_NOTIFY",
              "NEXTVAL", "SETVAL", "PG_ADVISORY")
# Statements are prepared (parsed and planned once per connection, not on
# every call) from their third use on, up to a bound per connection; those
# with long IN lists or multi-row VALUES (many parameters) are not.
PREPARE = True
_PREPARE_AFTER = 2
_PREPARE_MAX_PARAMS = 32
_PREPARED_PER_CONNECTION = 200
_PREPARABLE = ("SELECT", "UPDATE", "INSERT", "DELETE")


def _statement(sql: str) -> _Statement:
    """
    The cached L{_Statement} of a text (the set of texts is small).
    """
    found = _statements.get(sql)
    if found is None:
        found = _Statement(sql, len(_statements))
        if len(_statements) < _STATEMENT_CACHE:
            _statements[sql] = found
        else:
            found.preparable = False
    return found


def _backoff():
    return retrying.simpleBackoffIterator(
        initialDelay=0.25, maxDelay=2.0, factor=1.5, maxRetries=0, now=True
    )


def _connection_is_dead(conn, failure) -> bool:
    """
    Whether an error means C{conn} must be reconnected: the connection is
    closed or broken, or the server ended the session.  A deadlock or a
    serialization failure (OperationalError too) leaves it usable.
    """
    if failure.check(psycopg2.InterfaceError, txpostgres.RollbackFailed):
        return True
    if failure.check(psycopg2.OperationalError):
        pg = conn.pollable()
        if pg is None or pg.closed:
            return True
        code = getattr(failure.value, "pgcode", None)
        return code is None or code.startswith(("08", "57P"))
    return False


class _Detector(reconnection.DeadConnectionDetector):
    """
    txpostgres' detector, which can be told to stop: its reconnection
    retries go on (forever, with L{_backoff}) after the connection is closed
    otherwise, and would open it again after the store stopped.
    """

    stopped = False

    def stop(self) -> None:
        self.stopped = True

    def reconnect(self):
        if self.stopped:
            return None  # ends the retries
        return super().reconnect()

    def connectionRecovered(self):
        if self.stopped:
            # The last attempt connected just before the stop: close it.
            try:
                self.reconnectable.close()
            except Exception:
                pass
            return None
        return super().connectionRecovered()


def _with_detector(factory, reactor, cooperator=None):
    detector = _Detector(reconnectionIterator=_backoff, reactor=reactor)
    conn = factory(reactor, cooperator, detector=detector)
    detector.deathChecker = lambda failure: _connection_is_dead(conn, failure)
    return conn


class _ListenerConnection(txpostgres.Connection):
    """
    The connection that LISTENs.  When its server goes away, the read that
    finds out raises; the reactor would log that as an unhandled error with
    a traceback, which reads like a crash.  It is an expected event, logged
    as a warning, and the connection then goes through the same loss (and
    reconnection) as before.
    """

    log = Logger()

    def doRead(self):
        try:
            return super().doRead()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            self.log.warn("PostgreSQL LISTEN connection lost ({reason}); reconnecting",
                          reason=reason)
            return e  # the reactor calls connectionLost with it


def _listener_connection(reactor):
    return _with_detector(_ListenerConnection, reactor)


# A statement of at most this many bytes leaves execute() fully sent (the
# socket's send buffer is far larger, and empty between statements).
_SENT_WHOLE = 8192


@implementer(IReadWriteDescriptor)
class _Watcher:
    """
    What the reactor watches for a pooled connection between statements and
    while one runs: a duplicate of the connection's socket.  libpq closes
    its own descriptor the moment it finds the connection broken, inside a
    poll; watching a duplicate lets the reactor forget the socket cleanly
    afterwards, without unregistering a descriptor that no longer exists.
    """

    def __init__(self, conn: _PooledConnection, fd: int):
        self.conn = conn
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "postgres"

    def doRead(self):
        self.conn._readable()

    def doWrite(self):
        self.conn._writable()

    def connectionLost(self, reason):
        self.conn._watcher_lost(reason)


class _PooledConnection(txpostgres.Connection):
    """
    A pooled connection with a lean path for statements: L{query}.

    txpostgres wraps every statement in a cursor object that takes the
    connection off the reactor and puts it back, and delivers the result one
    reactor turn later.  Here, once connected, the socket stays watched (by
    a L{_Watcher}) and a result is delivered as soon as it is read.
    Connecting, closing and reconnecting are txpostgres' own.
    """

    _pending: defer.Deferred | None = None
    _writing = False
    _watcher: _Watcher | None = None
    # Names of the statements prepared in this session; whether they must
    # all be dropped before the next statement.
    prepared: set[str] = frozenset()
    deallocate = False

    def connect(self, *args, **kwargs):
        d = super().connect(*args, **kwargs)
        return d.addCallback(self._attach)

    def _attach(self, result):
        # txpostgres watches the connection for NOTIFY; a pooled one listens
        # to nothing, so the watcher takes its place.
        self.reactor.removeReader(self)
        self.prepared = set()
        self.deallocate = False
        self._watcher = _Watcher(self, os.dup(self._connection.fileno()))
        self.reactor.addReader(self._watcher)
        return result

    def _detach(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            self.reactor.removeReader(watcher)
            self.reactor.removeWriter(watcher)
            os.close(watcher.fd)
            watcher.fd = -1

    def close(self):
        self._detach()
        try:
            return super().close()
        finally:
            self._fail_pending(psycopg2.InterfaceError("connection closed"))

    def _fail_pending(self, error: BaseException) -> None:
        d, self._pending = self._pending, None
        self._writing = False
        if d is not None:
            d.errback(error)

    def query(self, cursor, sql: str, params) -> defer.Deferred:
        """
        Send C{sql} (one or several statements) on C{cursor}, a psycopg2
        cursor of this connection; fires when the results are in the cursor.
        One at a time: the caller owns the connection (see L{_Pool}).
        """
        if self._pending is not None:
            return defer.fail(txpostgres.AlreadyPolling())
        if self._watcher is None:
            return defer.fail(psycopg2.InterfaceError("connection not open"))
        try:
            cursor.execute(sql, params)
        except Exception:
            return defer.fail()
        d = self._pending = defer.Deferred()
        if len(cursor.query) > _SENT_WHOLE:
            # Perhaps not all sent yet: let psycopg2 say what to wait for.
            self._advance(first=True)
        # Else execute() sent it whole (a small message, an empty socket
        # buffer: the server has answered everything sent before), so the
        # answer is what to wait for, and the watcher is waiting for it.
        # Polling now would only cost a read that finds nothing.
        return d

    def _advance(self, first: bool = False) -> None:
        pg = self._connection
        try:
            state = pg.poll()
        except Exception:
            if pg.closed:
                self._detach()
            d, self._pending = self._pending, None
            d.errback()
            return
        if state == _pgext.POLL_OK:
            d, self._pending = self._pending, None
            if first:
                # Answered before query() returned (a quick server, a slow
                # client): deliver on the next reactor turn, or a caller
                # that sends its next statement from the callback would
                # recurse once per statement.
                self.reactor.callLater(0, d.callback, None)
            else:
                d.callback(None)
        elif state == _pgext.POLL_WRITE:
            self._writing = True
            self.reactor.addWriter(self._watcher)
        elif state != _pgext.POLL_READ:
            d, self._pending = self._pending, None
            d.errback(txpostgres.UnexpectedPollResult())

    def _readable(self) -> None:
        if self._pending is not None:
            self._advance()
            return
        # Nothing asked: the server closed the connection, or sent a notice.
        pg = self._connection
        try:
            pg.poll()
        except Exception:
            failure = Failure()
            if pg.closed:
                self._detach()
            self.detector.checkForDeadConnection(failure)
        else:
            if pg.closed:
                self._detach()
            del pg.notices[:]

    def _writable(self) -> None:
        self.reactor.removeWriter(self._watcher)
        if self._pending is not None and self._writing:
            self._writing = False
            self._advance()

    def _watcher_lost(self, reason) -> None:
        self._detach()
        error = psycopg2.InterfaceError(f"connection lost: {reason.getErrorMessage()}")
        if self._pending is not None:
            self._fail_pending(error)
        else:
            self.detector.checkForDeadConnection(Failure(error))


class _Pool:
    """
    L{_PooledConnection}s, one transaction on each at a time: C{size} of
    them from the start, more (up to C{max_size}) while transactions queue
    for one; a transaction blocked on a run's lock keeps its connection, and
    the others should not wait behind it.  A live connection is preferred;
    when only dead ones are idle, one is handed out anyway so that the call
    fails at once (L{StoreUnavailable}) instead of waiting for the database
    to come back.
    """

    def __init__(self, reactor, url: str, size: int, max_size: int):
        self.reactor = reactor
        self.url = url
        self.max_size = max(size, max_size)
        self.connections = [_with_detector(_PooledConnection, reactor)
                            for _ in range(size)]
        self._idle = list(self.connections)
        self._waiters: deque[defer.Deferred] = deque()
        self._handing_out = False
        self._growing: _PooledConnection | None = None
        self._closed = False

    def start(self) -> defer.Deferred:
        d = defer.DeferredList([c.connect(self.url) for c in self.connections],
                               fireOnOneErrback=True, consumeErrors=True)
        return d.addCallback(lambda _: self)

    def _pick(self):
        idle = self._idle
        for i in range(len(idle) - 1, -1, -1):
            if not idle[i].detector.connectionIsDead:
                return idle.pop(i)
        return idle.pop()

    def acquire(self) -> defer.Deferred:
        if self._idle:
            return defer.succeed(self._pick())
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        self._grow()
        return d

    def _grow(self) -> None:
        """
        Open one more connection if units wait, one at a time.
        """
        if (self._growing is not None or self._closed or not self._waiters
                or len(self.connections) >= self.max_size
                or any(c.detector.connectionIsDead for c in self.connections)):
            return
        conn = self._growing = _with_detector(_PooledConnection, self.reactor)

        def connected(_):
            self._growing = None
            if self._closed:
                conn.close()
                return
            self.connections.append(conn)
            self.release(conn)
            self._grow()

        def failed(_):
            # The database refuses more connections (or is away): make do
            # with the ones there are.
            self._growing = None
            try:
                conn.close()
            except Exception:
                pass

        conn.connect(self.url).addCallbacks(connected, failed)

    def release(self, conn) -> None:
        self._idle.append(conn)
        if self._handing_out:
            # A waiter's transaction ended at once (a dead connection fails
            # fast): the loop below hands this one out, without recursion.
            return
        self._handing_out = True
        try:
            while self._waiters and self._idle:
                self._waiters.popleft().callback(self._pick())
        finally:
            self._handing_out = False

    def close(self) -> None:
        self._closed = True
        for conn in self.connections:
            conn.detector.stop()
            try:
                conn.close()
            except Exception:
                pass


@implementer(ISharedTransaction)
class PostgresTransaction(SqlTransaction):
    """
    One transaction on one pooled connection, sent in as few round trips as
    it can be (see the module's docstring).
    """

    ORDER = "seq"

    def __init__(self, conn: _PooledConnection, cursor):
        self._conn = conn
        self._cursor = cursor
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
        self._held.append(_statement(sql))
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
        statement = _statement(sql)
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

    # claims: one statement each, the run's flow name included ---------------

    # Rows another server has locked are skipped, never waited for; a run
    # whose row is locked (a transaction is deciding about it) is skipped
    # this time too, so a claim can never deadlock with such a transaction.
    CLAIM_STEPS = (
        f"UPDATE steps s SET {CLAIM_STEP_SET} "
        "FROM ("
        " SELECT c.run_id, c.id, r.flow_name FROM steps c JOIN runs r ON r.id = c.run_id"
        f" WHERE {RUNNABLE_STEP} ORDER BY c.ready_at, c.seq LIMIT ?"
        " FOR UPDATE OF c SKIP LOCKED FOR SHARE OF r SKIP LOCKED) picked "
        "WHERE s.run_id = picked.run_id AND s.id = picked.id "
        "RETURNING s.run_id, s.id, s.stage, s.name, s.env, s.retry_count, "
        "s.claim_no, s.timeout_seconds, s.ready_at, s.seq, picked.flow_name"
    )
    # The run's row is locked with its call: the claimer then starts the run.
    CLAIM_FLOW_CALLS = (
        "UPDATE flow_calls f SET status = 'running', worker_id = ?, started_at = ? "
        "FROM ("
        " SELECT c.id, r.flow_name FROM flow_calls c JOIN runs r ON r.id = c.run_id"
        f" WHERE {NEXT_FLOW_CALL} ORDER BY c.id LIMIT ?"
        " FOR UPDATE OF c, r SKIP LOCKED) picked "
        "WHERE f.id = picked.id RETURNING f.*, picked.flow_name"
    )

    # the registry of servers --------------------------------------------------

    async def heartbeat(self, worker_id, timeout_ms):
        """
        Record that C{worker_id} is alive and take the dead ones out of the
        registry; fires with their ids (each reported to one server only).
        Times come from the database's clock, shared by every server.
        """
        now_sql = "(extract(epoch from clock_timestamp()) * 1000)::bigint"
        self._hold(
            f"INSERT INTO workers (id, started_at, heartbeat_at) "
            f"VALUES (?, {now_sql}, {now_sql}) "
            f"ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
            (worker_id,),
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


class _Replay(Exception):
    """
    Run the unit again (see L{PostgresTransaction.replay}).
    """


def _unavailable(error: BaseException) -> BaseException | None:
    """
    L{StoreUnavailable} for a lost or dead connection, else None.
    """
    if isinstance(error, (reconnection.ConnectionDead, psycopg2.OperationalError,
                          psycopg2.InterfaceError, txpostgres.RollbackFailed)):
        return StoreUnavailable(f"database unavailable: {error}")
    return None


@implementer(IStore)
class PostgresStore:
    log = Logger()
    backend = "postgres"

    def __init__(self, url: str, reactor, pool_size: int = POOL_SIZE,
                 pool_max: int = POOL_MAX):
        self.url = _dsn(url)
        self.reactor = reactor
        self.pool_size = pool_size
        self.pool_max = pool_max
        self.pool: _Pool | None = None
        self.listener = None
        self.schema_version = 0
        self._observers: list = []
        self.peers = SharedPeers(self)
        self._in_flight: set[defer.Deferred] = set()

    # lifecycle ------------------------------------------------------------

    async def _start(self):
        await self._migrate()
        self.pool = _Pool(self.reactor, self.url, self.pool_size, self.pool_max)
        await self.pool.start()
        self.listener = _listener_connection(self.reactor)
        await self.listener.connect(self.url)
        self.listener.addNotifyObserver(self._notified)
        self.listener.detector.addRecoveryHandler(self._listen)
        await self._listen()
        self.log.info("PostgreSQL store ready at {where} (schema {v})",
                      where=_describe(self.url), v=self.schema_version)
        return self

    def start(self):
        return defer.ensureDeferred(self._start())

    async def _migrate(self):
        """
        Apply pending migrations under an advisory lock, so that servers
        starting together migrate once.
        """
        conn = txpostgres.Connection(self.reactor)
        await conn.connect(self.url)
        try:
            await conn.runOperation("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            try:
                await conn.runOperation(
                    "CREATE TABLE IF NOT EXISTS schema_version "
                    "(version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
                )
                rows = await conn.runQuery(
                    "SELECT coalesce(max(version), 0) FROM schema_version"
                )
                current = rows[0][0]
                for version, path in migrations("postgres"):
                    if version <= current:
                        continue
                    script = path.read_text()

                    async def apply(cur, script=script, version=version):
                        await cur.execute(script)
                        await cur.execute(
                            "INSERT INTO schema_version VALUES (%s, now())", (version,)
                        )

                    await conn.runInteraction(lambda cur: defer.ensureDeferred(apply(cur)))
                    current = version
                self.schema_version = current
            finally:
                await conn.runOperation("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        finally:
            conn.close()

    def _listen(self):
        return self.listener.runOperation(f"LISTEN {CHANNEL}")

    async def _stop(self):
        # Let transactions in flight finish: closing their connection would
        # leave them open on the server, holding their locks.
        while self._in_flight:
            await defer.DeferredList(list(self._in_flight), consumeErrors=True)
        if self.listener is not None:
            self.listener.removeNotifyObserver(self._notified)
            self.listener.detector.stop()
            try:
                self.listener.close()
            except Exception:
                pass
            self.listener = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def stop(self):
        return defer.ensureDeferred(self._stop())

    def ping(self):
        if self.pool is None:
            return defer.succeed(False)

        async def one(tx):
            return await tx._execute("SELECT 1")

        d = self.transaction(one)
        d.addCallbacks(lambda _: True, lambda _: False)
        return d

    # notifications ----------------------------------------------------------

    def add_observer(self, observer) -> None:
        """
        Call C{observer(payload: dict)} for every notification.
        """
        self._observers.append(observer)

    def _notified(self, notify):
        if notify.channel != CHANNEL:
            return
        try:
            payload = json.loads(notify.payload) if notify.payload else {}
        except ValueError:
            return
        for observer in list(self._observers):
            try:
                observer(payload)
            except Exception:
                self.log.failure("notification observer failed")

    # units of work --------------------------------------------------------

    def transaction(self, fn, *args, **kwargs):
        d = defer.ensureDeferred(self._transaction(fn, args, kwargs))
        self._in_flight.add(d)

        def done(result):
            self._in_flight.discard(d)
            return result

        return d.addBoth(done)

    read = transaction

    async def _transaction(self, fn, args, kwargs):
        for attempt in range(RETRIES):
            if self.pool is None:
                raise StoreUnavailable("the database is closed")
            try:
                return await self._attempt(fn, args, kwargs)
            except _Replay as replay:
                if attempt < RETRIES - 1:
                    continue
                error = replay.__cause__
                raise _unavailable(error) or error from error
            except psycopg2.Error as e:
                if e.pgcode in _RETRYABLE_SQLSTATES and attempt < RETRIES - 1:
                    continue
                unavailable = _unavailable(e)
                if unavailable is not None:
                    raise unavailable from e
                raise
            except (reconnection.ConnectionDead, txpostgres.RollbackFailed) as e:
                raise _unavailable(e) from e

    async def _attempt(self, fn, args, kwargs):
        pool = self.pool
        conn = await pool.acquire()
        try:
            if conn.detector.connectionIsDead:
                raise reconnection.ConnectionDead()
            tx = PostgresTransaction(conn, None)
            try:
                tx._cursor = conn.pollable().cursor()
                result = await fn(tx, *args, **kwargs)
                await tx.commit()
                return result
            except BaseException as error:
                if tx.begun or conn.deallocate:
                    try:
                        await tx.rollback()
                    except Exception:
                        failed = txpostgres.RollbackFailed(conn, Failure(error))
                        conn.detector.checkForDeadConnection(Failure(failed))
                        raise failed from error
                if isinstance(error, psycopg2.Error):
                    conn.detector.checkForDeadConnection(Failure(error))
                    if tx.replay:
                        raise _Replay() from error
                raise
        finally:
            pool.release(conn)
