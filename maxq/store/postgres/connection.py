"""
Connections to PostgreSQL: the pooled ones (with their lean statement
path, L{_PooledConnection.query}) and the one that LISTENs, each with a
detector that reconnects it.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import psycopg2
from psycopg2 import extensions as _pgext
from twisted.internet import defer
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres
from zope.interface import implementer


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
