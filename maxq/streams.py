"""
L{EventHub}: the one reader of new events on this server, fanning them out
to every open event stream, and the pruning of events past retention.

New rows are read once per wake-up, however many streams are open: after
each local commit that wrote events (the engine's C{event_listeners}), on
a notification from another server (C{peers.add_observer}), and by a
short poll while streams are open (a lost notification costs latency,
never an event); nothing is read while no stream is open.

Every reader of events stops at the hub's settled bound: the highest id
below which every id is final, committed or never to be.  On SQLite (one
writer) that is simply the highest id.  On PostgreSQL ids are drawn
without a lock and may commit out of order, so the bound moves by probes
(L{advance}): up to the end of the run of committed ids, and past a gap
once every transaction that was in progress when the gap's ids had been
drawn has ended (a rolled-back transaction leaves a gap for good).  So
reading "after the last id seen, up to the bound" never skips an event
nor sends one twice, and ids reach every reader in increasing order.
Holding a lock to the commit instead would serialise every commit's WAL
flush on the database (measured in docs/FACTS.md).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

PAGE = 1000
POLL_S = 1.0
# How soon a read looks again while a gap waits for transactions in progress.
SETTLE_RETRY_S = 0.01
# How long after a first wake-up the hub reads (the commits in between go
# out together).
BATCH_S = 0.01
# Under a steady flow of commits, reads start at most this often: each read
# costs every open stream a write (and its client a read), so this bounds a
# stream's cost per second, at the price of up to this much latency
# (measured in docs/FACTS.md §10).
READ_INTERVAL_S = 0.02
PRUNE_S = 60.0
PRUNE_BATCH = 500


def advance(settled: int | None, candidate, probe):
    """
    The settled bound and pending candidate after C{probe} (an
    L{maxq.store.history.EventProbe} taken with C{settled}); a candidate
    is C{(last id, transactions in progress)} from an earlier probe.
    """
    if probe.in_progress is None or not probe.in_progress:
        # Ids in commit order, or nothing in progress: all drawn are final.
        return max(settled or 0, probe.last), None
    if candidate is not None and candidate[1].isdisjoint(probe.in_progress):
        # Every transaction that could still have held an id up to the
        # candidate's has ended.
        settled = max(settled or 0, candidate[0])
        candidate = None
    elif settled is not None:
        through = probe.scanned_through if probe.first_missing is None \
            else probe.first_missing - 1
        settled = max(settled, through)
    if candidate is None and (settled is None or settled < probe.last):
        candidate = (probe.last, probe.in_progress)
    return settled, candidate


class Batch(list):
    """
    The events one read hands to every stream of one filter at one cursor:
    a list, and in C{derived} what those streams make of it once for all
    (an SSE stream keeps its joined frames there).
    """

    __slots__ = ("derived",)

    def __init__(self, events):
        super().__init__(events)
        self.derived: dict = {}


class Subscription:
    """
    One stream's view of the hub: events matching C{accepts} (everything
    when None) with an id above C{cursor} go to C{deliver(events)}.  While
    the stream replays from the database, live events wait in C{held}.
    Streams with equal C{key}s (their filter, hashable) at one cursor are
    given the same L{Batch}.
    """

    def __init__(self, accepts, deliver, cursor: int, on_stop=None, key=None):
        self.on_stop = on_stop
        self.accepts = accepts
        self.deliver = deliver
        self.cursor = cursor
        self.key = key
        self.replaying = True
        self.held: list[dict] = []

    def _fresh(self, events: list[dict]) -> list[dict]:
        cursor, accepts = self.cursor, self.accepts
        if accepts is None:
            if events and events[0]["id"] > cursor:
                return events
            return [e for e in events if e["id"] > cursor]
        return [e for e in events if e["id"] > cursor and accepts(e)]

    def offer(self, events: list[dict], shared: dict | None = None) -> None:
        """
        C{shared} maps C{(key, cursor)} to the batch already made for
        streams of that filter during one read.
        """
        if self.replaying:
            self.held.extend(self._fresh(events))
            return
        slot = (self.key, self.cursor) if shared is not None and self.key is not None \
            else None
        fresh = shared.get(slot) if slot is not None else None
        if fresh is None:
            fresh = Batch(self._fresh(events))
            if slot is not None:
                shared[slot] = fresh
        if not fresh:
            return
        self.cursor = fresh[-1]["id"]
        self.deliver(fresh)

    def go_live(self) -> None:
        self.replaying = False
        held, self.held = self.held, []
        self.offer(held)


class EventHub(Service):
    log = Logger()

    def __init__(self, store, clock, retention_ms: int):
        self.store = store
        self.clock = clock
        self.retention_ms = retention_ms
        self.subscriptions: set[Subscription] = set()
        self.last_id = 0
        # The settled bound (see the module docstring) and the probe that
        # may move it past a gap; None until the first probe settles.
        self.settled: int | None = None
        self._candidate = None
        self._probing = False
        self._waiting: list[defer.Deferred] = []
        self._again_call = None
        self._reading = False
        self.reading: defer.Deferred | None = None
        self._again = False
        self._last_read_at = float("-inf")
        self._poll: task.LoopingCall | None = None
        self._pruner: task.LoopingCall | None = None
        self._started = False

    # lifecycle -------------------------------------------------------------

    def startService(self):
        super().startService()
        return defer.ensureDeferred(self._start())

    async def _start(self):
        # Nothing to read yet: the first stream's cursor sets where the hub
        # starts (see subscribe), so a start never waits for a settled bound
        # (on PostgreSQL, for transactions in progress elsewhere).
        self._started = True
        self.store.peers.add_observer(self._notified)
        self._poll = task.LoopingCall(self._poll_tick)
        self._poll.clock = self.clock
        self._poll.start(POLL_S, now=False).addErrback(
            lambda f: self.log.failure("event poll stopped", f))
        self._pruner = task.LoopingCall(self.prune)
        self._pruner.clock = self.clock
        # Every minute, or sooner under a short retention (tests, demos).
        self._pruner.start(min(PRUNE_S, max(self.retention_ms / 4000, 0.5)), now=False).addErrback(
            lambda f: self.log.failure("event pruning stopped", f))

    def stopService(self):
        super().stopService()
        for loop in (self._poll, self._pruner):
            if loop is not None and loop.running:
                loop.stop()
        if self._again_call is not None and self._again_call.active():
            self._again_call.cancel()
        self._started = False
        # Open streams end with the server (clients reconnect elsewhere).
        for subscription in list(self.subscriptions):
            if subscription.on_stop is not None:
                subscription.on_stop()
        self.subscriptions.clear()

    # subscribers -------------------------------------------------------------

    def subscribe(self, accepts, deliver, cursor: int, on_stop=None,
                  key=None) -> Subscription:
        """
        C{on_stop()} is called if the server stops while subscribed; see
        L{Subscription} for C{accepts} and C{key}.
        """
        subscription = Subscription(accepts, deliver, cursor, on_stop, key)
        if not self.subscriptions:
            # Nothing was read while no stream was open (see wake): go on
            # from this stream's cursor, which its own replay starts from,
            # so the hub's next read covers everything after it.
            self.last_id = max(self.last_id, cursor)
        self.subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

    # the settled bound --------------------------------------------------------

    def settle(self) -> defer.Deferred:
        """
        Fire with the settled bound (every event with an id up to it is
        final), from a probe sent after this call: a caller sees what was
        committed before it asked.  Probes run one at a time (a probe's
        answer is applied whole, so a candidate is always older than the
        probe that settles it); callers arriving meanwhile share the next.
        """
        d = defer.Deferred()
        self._waiting.append(d)
        if not self._probing:
            self._probe()
        return d

    def _probe(self) -> None:
        self._probing = True
        waiting, self._waiting = self._waiting, []

        def finished(result):
            self._probing = False
            for d in waiting:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)
            if self._waiting:
                self._probe()

        defer.ensureDeferred(self._settle()).addBoth(finished)

    async def _settle(self) -> int:
        while True:
            settled = self.settled
            probe = await self.store.read(lambda tx: tx.event_probe(settled))
            self.settled, self._candidate = advance(self.settled, self._candidate, probe)
            if self.settled is not None:
                return self.settled
            # The start on PostgreSQL: wait for what was in progress.
            await task.deferLater(self.clock, SETTLE_RETRY_S, lambda: None)

    # reading new events ------------------------------------------------------

    def _notified(self, message: dict) -> None:
        if message.get("events") or message.get("recheck"):
            self.wake()

    def _poll_tick(self) -> None:
        if self.subscriptions:
            self.wake()

    def wake(self) -> None:
        """
        Read what is new, once, for every stream: a few milliseconds after
        the first wake-up, so that the events of the commits in between go
        out together (one read, one write per stream), and never sooner
        than L{READ_INTERVAL_S} after the previous read began; again after
        a read if woken during it.  Nothing is read while no stream is open.
        """
        if not self._started or not self.subscriptions:
            # No stream to feed: reading would cost a query per commit for
            # nobody.  The next subscriber brings its own cursor.
            return
        if self._reading:
            self._again = True
            return
        self._reading = True
        delay = max(BATCH_S, self._last_read_at + READ_INTERVAL_S - self.clock.seconds())
        self.clock.callLater(delay, self._read_now)

    def _read_now(self) -> None:
        self._last_read_at = self.clock.seconds()
        d = defer.ensureDeferred(self._read())
        d.addErrback(lambda f: self.log.failure("reading new events failed", f))
        # The read under way (tests wait for it).
        self.reading = d

    async def _read(self):
        try:
            while True:
                self._again = False
                after = self.last_id
                upto = await self.settle()
                if self._candidate is not None:
                    # A gap waits for transactions still in progress: look
                    # again shortly, whether or not anything else happens.
                    self._recheck()
                events = await self.store.read(
                    lambda tx: tx.list_events(after, None, None, None, PAGE, upto))
                if events:
                    self.last_id = events[-1]["id"]
                    shared: dict = {}
                    for subscription in list(self.subscriptions):
                        try:
                            subscription.offer(events, shared)
                        except Exception:
                            self.log.failure("an event stream failed")
                            self.subscriptions.discard(subscription)
                if len(events) < PAGE:
                    break
        finally:
            self._reading = False
        if self._again:
            # Woken while reading: read again, at the interval's pace.
            self.wake()

    def _recheck(self) -> None:
        if self._again_call is None or not self._again_call.active():
            self._again_call = self.clock.callLater(SETTLE_RETRY_S, self.wake)

    # retention ---------------------------------------------------------------

    async def prune(self) -> int:
        """
        Delete events older than the retention, in small batches (each its
        own short transaction); returns how many batches ran.
        """
        cutoff = int(self.clock.seconds() * 1000) - self.retention_ms
        batches = 0
        try:
            while True:
                highest = await self.store.transaction(
                    lambda tx: tx.prune_events(cutoff, PRUNE_BATCH))
                if not highest:
                    return batches
                batches += 1
                if batches >= 20:
                    # Enough for one tick; the rest on the next.
                    return batches
        except Exception:
            self.log.failure("pruning events failed")
            return batches
