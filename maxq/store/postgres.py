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
  costs only latency, since every server still polls.

txpostgres does not reconnect by itself: each pooled connection and the
LISTEN connection carry a C{DeadConnectionDetector}, and LISTEN is issued
again after every reconnection.  While the database is away, calls fail at
once with L{StoreUnavailable} (the API answers 503).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from maxq.errors import StoreUnavailable
from maxq.store import IStore
from maxq.store.migrations import migrations
from maxq.store.sql import (
    CLAIM_STEP_SET, NEXT_FLOW_CALL, RUNNABLE_STEP, SqlTransaction, clean_params,
)

CHANNEL = "maxq"
POOL_SIZE = 4
# Any 64-bit number; all MaxQ servers must agree on it.
MIGRATION_LOCK = 0x6D6178715F6D6967
# A transaction that loses a race is run again: a deadlock, a serialization
# failure, or a unique violation (two servers inserting the same key at
# once; the engine checks for duplicates first, so on the second try it
# sees the winner's row and takes the ordinary path).
RETRIES = 5
_RETRYABLE_SQLSTATES = {"40001", "40P01", "23505"}


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


_placeholders: dict[str, str] = {}


def _pyformat(sql: str) -> str:
    """
    Shared statements use C{?}; psycopg2 wants C{%s} (and a literal C{%}
    doubled).  Cached: the set of statement texts is small.
    """
    converted = _placeholders.get(sql)
    if converted is None:
        converted = sql.replace("%", "%%").replace("?", "%s")
        _placeholders[sql] = converted
    return converted


def _reconnecting_connection(reactor, cooperator):
    from txpostgres import reconnection, retrying, txpostgres

    def backoff():
        return retrying.simpleBackoffIterator(
            initialDelay=0.25, maxDelay=2.0, factor=1.5, maxRetries=0, now=True
        )

    detector = reconnection.DeadConnectionDetector(reconnectionIterator=backoff)
    detector.reactor = reactor
    return txpostgres.Connection(reactor, cooperator, detector=detector)


def _unavailable(failure):
    """
    Turn a lost or dead connection into L{StoreUnavailable}.
    """
    import psycopg2
    from txpostgres import reconnection, txpostgres

    if failure.check(reconnection.ConnectionDead, psycopg2.OperationalError,
                     psycopg2.InterfaceError, txpostgres.RollbackFailed):
        raise StoreUnavailable(f"database unavailable: {failure.value}")
    return failure


class PostgresTransaction(SqlTransaction):
    ORDER = "seq"

    def __init__(self, cursor):
        self.cursor = cursor

    async def _execute(self, sql, params=()):
        cur = await self.cursor.execute(_pyformat(sql), clean_params(params))
        if cur.description is None:
            return [], [], cur.rowcount
        columns = [d[0] for d in cur.description]
        return columns, cur.fetchall(), cur.rowcount

    async def lock_run(self, run_id):
        await self._execute("SELECT 1 FROM runs WHERE id = ? FOR UPDATE", (run_id,))

    async def notify(self, payload: str):
        await self._execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))

    # Rows another server has locked are skipped, never waited for; a run
    # whose row is locked (a transaction is deciding about it) is skipped
    # this time too, so a claim can never deadlock with such a transaction.
    CLAIM_STEPS = (
        f"UPDATE steps s SET {CLAIM_STEP_SET} "
        "FROM ("
        " SELECT c.run_id, c.id FROM steps c JOIN runs r ON r.id = c.run_id"
        f" WHERE {RUNNABLE_STEP} ORDER BY c.ready_at, c.seq LIMIT ?"
        " FOR UPDATE OF c SKIP LOCKED FOR SHARE OF r SKIP LOCKED) picked "
        "WHERE s.run_id = picked.run_id AND s.id = picked.id "
        "RETURNING s.run_id, s.id, s.stage, s.name, s.env, s.retry_count, "
        "s.claim_no, s.timeout_seconds, s.ready_at, s.seq"
    )
    # The run's row is locked with its call: the claimer then starts the run.
    CLAIM_FLOW_CALLS = (
        "UPDATE flow_calls f SET status = 'running', worker_id = ?, started_at = ? "
        "FROM ("
        " SELECT c.id FROM flow_calls c JOIN runs r ON r.id = c.run_id"
        f" WHERE {NEXT_FLOW_CALL} ORDER BY c.id LIMIT ?"
        " FOR UPDATE OF c, r SKIP LOCKED) picked "
        "WHERE f.id = picked.id RETURNING f.*"
    )

    async def heartbeat(self, worker_id, timeout_ms):
        """
        Record that C{worker_id} is alive and take the dead ones out of the
        registry; fires with their ids (each reported to one server only).
        Times come from the database's clock, shared by every server.
        """
        now_sql = "(extract(epoch from clock_timestamp()) * 1000)::bigint"
        await self._execute(
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
        await self._execute("DELETE FROM workers WHERE id = ?", (worker_id,))


@implementer(IStore)
class PostgresStore:
    log = Logger()
    backend = "postgres"

    def __init__(self, url: str, reactor, pool_size: int = POOL_SIZE):
        self.url = _dsn(url)
        self.reactor = reactor
        self.pool_size = pool_size
        self.pool = None
        self.listener = None
        self.schema_version = 0
        self._observers: list = []
        self._in_flight: set[defer.Deferred] = set()

    # lifecycle ------------------------------------------------------------

    async def _start(self):
        from txpostgres import txpostgres

        await self._migrate()

        class Pool(txpostgres.ConnectionPool):
            connectionFactory = staticmethod(_reconnecting_connection)
            reactor = self.reactor

        self.pool = Pool(None, self.url, min=self.pool_size)
        await self.pool.start()
        self.listener = _reconnecting_connection(self.reactor, None)
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
        from txpostgres import txpostgres

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
            try:
                self.listener.close()
            except Exception:
                pass
            self.listener = None
        if self.pool is not None:
            for conn in list(self.pool.connections):
                try:
                    conn.close()
                except Exception:
                    pass
            self.pool = None

    def stop(self):
        return defer.ensureDeferred(self._stop())

    def ping(self):
        if self.pool is None:
            return defer.succeed(False)
        d = self.pool.runQuery("SELECT 1")
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
        import psycopg2

        if self.pool is None:
            raise StoreUnavailable("the database is closed")
        for attempt in range(RETRIES):
            d = self.pool.runInteraction(
                lambda cur: defer.ensureDeferred(fn(PostgresTransaction(cur), *args,
                                                    **kwargs))
            )
            d.addErrback(_unavailable)
            try:
                return await d
            except psycopg2.Error as e:
                if e.pgcode in _RETRYABLE_SQLSTATES and attempt < RETRIES - 1:
                    continue
                raise
