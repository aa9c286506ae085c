"""
L{PostgresStore}: the PostgreSQL backend's L{IStore} (see the package's
docstring).
"""

from __future__ import annotations

import json

import psycopg2
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres
from zope.interface import implementer

from maxq.errors import StoreUnavailable
from maxq.store import IStore
from maxq.store.migrations import pending_migrations
from maxq.store.peers import SharedPeers
from maxq.store.postgres.connection import _describe, _dsn, _listener_connection
from maxq.store.postgres.pool import _Pool
from maxq.store.postgres.statements import StatementCache
from maxq.store.postgres.transaction import CHANNEL, PostgresTransaction

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
        # What this store's transactions learn about their statements.
        self.statements = StatementCache()

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
                for version, script in pending_migrations("postgres", current):
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
            tx = PostgresTransaction(conn, None, self.statements)
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
