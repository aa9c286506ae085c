"""
The pool of connections a PostgreSQL store runs its transactions on.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer

from maxq.store.postgres.connection import _PooledConnection, _with_detector


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
