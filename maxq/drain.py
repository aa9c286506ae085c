"""
The scheduler's recording of results, and its shutdown drain.

Every result (or requeue) is written through L{Drain.persist}, retried with
backoff while the database is busy or full, and tracked until it is written.
Stopping, L{Drain.finish} gives the running processes the shutdown grace,
terminates what still runs (its work goes back to pending) and waits for the
writes, for up to C{RECORD_DEADLINE_S}; L{Drain.hurry} cuts all of it short.
"""

from __future__ import annotations

from twisted.internet import defer

from maxq.errors import StoreUnavailable

# The termination reason of the processes a stop ends: their work is
# requeued, not failed.
SHUTDOWN = "shutdown"
# Recording a result while the database is busy or full: first retry after
# RETRY_FIRST_S, doubling up to RETRY_MAX_S, for as long as the server runs;
# once it stops, for RECORD_DEADLINE_S more (what is still unrecorded then
# stays "running" in the database and is recovered on the next start).
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0
RECORD_DEADLINE_S = 5.0


class Drain:
    """
    C{runner} is the scheduler's L{maxq.process.ScriptRunner}; C{log} the
    scheduler's logger (the drain logs as the scheduler).
    """

    def __init__(self, runner, clock, log):
        self.runner = runner
        self.clock = clock
        self.log = log
        # Stopping; told to stop at once; no more database retries.
        self.stopping = False
        self.hurried = False
        self.abandoned = False
        self._grace_waiter: defer.Deferred | None = None
        self._recording: set[defer.Deferred] = set()
        self._sleeps: dict[defer.Deferred, object] = {}

    def reset(self) -> None:
        """
        (Re)started: not stopping, and retrying the database again.
        """
        self.stopping = False
        self.hurried = False
        self.abandoned = False

    def begin(self) -> None:
        """
        The stop has begun: from now on L{hurry} kills the processes too.
        """
        self.stopping = True

    async def finish(self, handles: list, grace_s: float) -> None:
        """
        The end of a stop, once nothing more is started: the grace for
        C{handles} (the running processes' handles), then terminate what
        still runs, then wait for the results to be written.
        """
        await self._grace(handles, grace_s)
        if self.hurried:
            self.runner.kill_all(SHUTDOWN)
        # Whatever still runs is terminated and goes back to pending.
        await self.runner.terminate_all(SHUTDOWN)
        give_up = self.clock.callLater(RECORD_DEADLINE_S, self.give_up)
        try:
            while self._recording:
                await defer.DeferredList(list(self._recording), consumeErrors=True)
        finally:
            if give_up.active():
                give_up.cancel()

    async def _grace(self, handles: list, grace: float) -> None:
        """
        Let the running processes finish on their own, for up to C{grace}
        seconds, unless told to stop at once.
        """
        if not handles or grace <= 0 or self.hurried:
            return
        self.log.info(
            "stopping: waiting up to {grace}s for {n} running processes "
            "(a second SIGTERM stops at once)", grace=grace, n=len(handles))
        waiter = self._grace_waiter = defer.Deferred()

        def over(_=None):
            if not waiter.called:
                waiter.callback(None)

        timer = self.clock.callLater(grace, over)
        defer.DeferredList([h.done for h in handles], consumeErrors=True).addCallback(over)
        try:
            await waiter
        finally:
            self._grace_waiter = None
            if timer.active():
                timer.cancel()

    def hurry(self) -> None:
        """
        No more grace, SIGKILL every process group if stopping, and no more
        database retries.
        """
        self.hurried = True
        if self._grace_waiter is not None and not self._grace_waiter.called:
            self._grace_waiter.callback(None)
        if self.stopping:
            self.runner.kill_all(SHUTDOWN)
        self.give_up()

    def give_up(self) -> None:
        """
        Stop retrying the database: what fails from now on is left to the
        recovery of the next start.
        """
        self.abandoned = True
        for d, call in list(self._sleeps.items()):
            if call.active():
                call.cancel()
                d.callback(None)

    async def persist(self, what: str, fn, *args):
        """
        C{await fn(*args)}, retried with backoff while the database is busy
        or full: a result is never dropped because of a locked database.
        Each attempt is one transaction, all or nothing, so retrying is safe.
        """
        delay = RETRY_FIRST_S
        while True:
            try:
                return await fn(*args)
            except StoreUnavailable as e:
                if self.abandoned:
                    self.log.error(
                        "gave up {what} while stopping ({error}); the next start "
                        "recovers it", what=what, error=str(e))
                    return None
                self.log.warn("{what}: {error}; retrying in {delay}s", what=what,
                              error=str(e), delay=delay)
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _sleep(self, seconds: float) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._sleeps[d] = self.clock.callLater(seconds, d.callback, None)

        def forget(result):
            self._sleeps.pop(d, None)
            return result

        return d.addBoth(forget)

    def track(self, d: defer.Deferred, what: str) -> None:
        """
        Wait for C{d} (a write) before a stop ends; log its failure.
        """
        self._recording.add(d)

        def done(outcome):
            self._recording.discard(d)
            return outcome

        d.addBoth(done)
        d.addErrback(lambda f: self.log.failure("failed {what}", f, what=what))
