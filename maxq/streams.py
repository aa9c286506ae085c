"""
L{EventHub}: the one reader of new events on this server, fanning them out
to every open event stream, and the pruning of events past retention.

New rows are read once per wake-up, however many streams are open: after
each local commit that wrote events (the engine's C{event_listeners}), on
a notification from another server (C{peers.add_observer}), and by a
short poll while streams are open (a lost notification costs latency,
never an event).  Event ids grow in commit order (see the store), so
reading "after the last id seen" never skips one.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

PAGE = 1000
POLL_S = 1.0
BATCH_S = 0.01
PRUNE_S = 60.0
PRUNE_BATCH = 500


class Subscription:
    """
    One stream's view of the hub: events matching C{accepts} with an id
    above C{cursor} go to C{deliver(events)}.  While the stream replays
    from the database, live events wait in C{held}.
    """

    def __init__(self, accepts, deliver, cursor: int, on_stop=None):
        self.on_stop = on_stop
        self.accepts = accepts
        self.deliver = deliver
        self.cursor = cursor
        self.replaying = True
        self.held: list[dict] = []

    def offer(self, events: list[dict]) -> None:
        fresh = [e for e in events if e["id"] > self.cursor and self.accepts(e)]
        if not fresh:
            return
        if self.replaying:
            self.held.extend(fresh)
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
        self._reading = False
        self._again = False
        self._poll: task.LoopingCall | None = None
        self._pruner: task.LoopingCall | None = None
        self._started = False

    # lifecycle -------------------------------------------------------------

    def startService(self):
        super().startService()
        return defer.ensureDeferred(self._start())

    async def _start(self):
        self.last_id, _ = await self.store.read(lambda tx: tx.event_bounds())
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
        self._started = False
        # Open streams end with the server (clients reconnect elsewhere).
        for subscription in list(self.subscriptions):
            if subscription.on_stop is not None:
                subscription.on_stop()
        self.subscriptions.clear()

    # subscribers -------------------------------------------------------------

    def subscribe(self, accepts, deliver, cursor: int, on_stop=None) -> Subscription:
        """
        C{on_stop()} is called if the server stops while subscribed.
        """
        subscription = Subscription(accepts, deliver, cursor, on_stop)
        self.subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

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
        out together (one read, one write per stream), and again after a
        read if woken during it.
        """
        if not self._started:
            return
        if self._reading:
            self._again = True
            return
        self._reading = True
        self.clock.callLater(BATCH_S, self._read_now)

    def _read_now(self) -> None:
        d = defer.ensureDeferred(self._read())
        d.addErrback(lambda f: self.log.failure("reading new events failed", f))

    async def _read(self):
        try:
            while True:
                self._again = False
                after = self.last_id
                events = await self.store.read(
                    lambda tx: tx.list_events(after, None, None, None, PAGE))
                if events:
                    self.last_id = events[-1]["id"]
                    for subscription in list(self.subscriptions):
                        try:
                            subscription.offer(events)
                        except Exception:
                            self.log.failure("an event stream failed")
                            self.subscriptions.discard(subscription)
                if len(events) < PAGE and not self._again:
                    return
        finally:
            self._reading = False

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
