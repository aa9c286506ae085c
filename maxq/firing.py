"""
L{FiringService}: triggers scheduled flows at their fire times (SPEC §5).

One C{IDelayedCall} is set at the earliest next fire time across every
scheduled flow; nothing is polled per flow or per second.  A rescan every
second sees edits, new flows and removed ones: it reads the flow.yaml
(cached by stat in L{maxq.flows.FlowsRoot}) of the flows the kernel said
changed (L{maxq.flowwatch}), so that it costs nothing while nothing
changes, and of every flow where nothing watches and every
L{FULL_RESCAN_MS}.  A flow seen for the first time (and every flow at start) is
fired at once: the engine then creates its state, or catches up on what
was missed while no server ran.  Which server makes a run is the
database's decision (L{maxq.engine.schedules.fire}): a schedule another
server is firing is tried again shortly.  Flows due at the same instant
are fired in one transaction (up to L{FIRE_BATCH}).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger

from maxq import schedule_times
from maxq.errors import StoreUnavailable

RESCAN_S = 1.0
# With the flows watched (maxq.flowwatch) a rescan reads only the flows
# that changed; every flow is read again this often all the same.
FULL_RESCAN_MS = 30_000
# Another server holds the schedule: look again this much later.
BUSY_RETRY_MS = 250
# The database failed: try the fire again this much later.
ERROR_RETRY_MS = 1000
# Batches of fires run at once on a database that runs transactions
# concurrently.
CONCURRENT_FIRES = 8
# Flows fired in one transaction (those due at the same instant): one
# commit for many, while a batch stays short enough not to hold the
# database long.
FIRE_BATCH = 100


class FiringService(Service):
    log = Logger()
    name = "firing"

    def __init__(self, engine, flows, clock, rescan_s: float = RESCAN_S):
        self.engine = engine
        self.flows = flows
        self.clock = clock
        self.rescan_s = rescan_s
        # flow -> its schedule as flow.yaml says; flow -> next fire (ms)
        self.specs: dict[str, schedule_times.Schedule] = {}
        self.next_at: dict[str, int] = {}
        self._timer = None
        self._pass_d: defer.Deferred | None = None
        self._again = False
        self._limit = defer.DeferredSemaphore(CONCURRENT_FIRES)
        self._loop = task.LoopingCall(self.rescan)
        self._loop.clock = clock
        # The flows' change serial at the last rescan, and when the next
        # full one is due (see FULL_RESCAN_MS).
        self._seen: int | None = None
        self._full_at = 0
        self._watching = False

    def _now(self) -> int:
        return int(self.clock.seconds() * 1000)

    def startService(self):
        super().startService()
        if IReactorFDSet.providedBy(self.clock):
            self._watching = self.flows.watch(self.clock)
        self._loop.start(self.rescan_s, now=True)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self._cancel_timer()
        if self._watching:
            self.flows.unwatch()
            self._watching = False
        if self._pass_d is not None and not self._pass_d.called:
            done = defer.Deferred()
            self._pass_d.addBoth(lambda _: done.callback(None))
            return done
        return defer.succeed(None)

    # ----------------------------------------------------------- rescan

    def rescan(self) -> None:
        """
        Compare flow.yaml with what the timers were set from: a new
        schedule fires at once, an edited one from its next fire time, a
        removed one is forgotten.
        """
        try:
            self._rescan()
        except Exception:
            self.log.failure("rescanning the flows' schedules failed")

    def _rescan(self) -> None:
        now = self._now()
        serial = self.flows.change_serial()
        looked = self.flows.changed_since(self._seen)
        if looked is None or now >= self._full_at:
            looked = None
            self._full_at = now + FULL_RESCAN_MS
        self._seen = serial
        found = {}
        for name in self.flows.flow_names() if looked is None else looked:
            spec = schedule_times.schedule_of(self.flows.config(name))
            if spec is not None:
                found[name] = spec
        changed = False
        gone = [n for n in self.specs if n not in found and (looked is None or n in looked)]
        for name in gone:
            del self.specs[name]
            self.next_at.pop(name, None)
            changed = True
        for name, spec in found.items():
            old = self.specs.get(name)
            # The same object while flow.yaml is unchanged (cached by stat).
            if old is spec or old == spec:
                continue
            self.specs[name] = spec
            self.next_at[name] = now if old is None else spec.next_after(now)
            changed = True
        if changed:
            self._arm()

    # ------------------------------------------------------------ timer

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm(self) -> None:
        """
        Set the one timer at the earliest next fire time.
        """
        self._cancel_timer()
        if not self.running or not self.next_at:
            return
        if self._pass_d is not None and not self._pass_d.called:
            self._again = True
            return
        earliest = min(t for t in self.next_at.values() if t is not None)
        delay = max(0.0, (earliest - self._now()) / 1000)
        self._timer = self.clock.callLater(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        self._pass_d = defer.ensureDeferred(self._pass())
        self._pass_d.addErrback(lambda f: self.log.failure("firing schedules failed", f))
        self._pass_d.addBoth(self._after_pass)

    def _after_pass(self, _):
        self._again = False
        self._arm()

    async def _pass(self) -> None:
        now = self._now()
        due = sorted(name for name, at in self.next_at.items()
                     if at is not None and at <= now)
        batches = [due[i:i + FIRE_BATCH] for i in range(0, len(due), FIRE_BATCH)]
        await defer.gatherResults(
            [self._limit.run(lambda b=batch: defer.ensureDeferred(self._fire(b)))
             for batch in batches], consumeErrors=True)

    def _ready(self, names: list[str]) -> list[tuple]:
        """
        C{(name, schedule, upto)} of each flow of C{names} to fire now.
        """
        fires = []
        now = self._now()
        for name in names:
            spec = self.specs.get(name)
            at = self.next_at.get(name)
            if spec is None or at is None or not self.running:
                continue
            if self.flows.flow_script(name) is None:
                # flow.yaml without an executable flow.sh: not a flow (yet).
                self.next_at[name] = spec.next_after(max(at, now))
                continue
            fires.append((name, spec, max(at, now)))
        return fires

    async def _fire(self, names: list[str]) -> None:
        """
        Fire C{names} in one transaction; when that fails for another
        reason than the database, each alone, so that one flow in error
        does not hold back the others.
        """
        fires = self._ready(names)
        if not fires:
            return
        try:
            results = await self.engine.fire_schedules(fires)
        except StoreUnavailable as e:
            self.log.warn("schedules of {flows} not fired, database unavailable: {error}",
                          flows=", ".join(name for name, _, _ in fires), error=e)
            for name, spec, _upto in fires:
                self._retry(name, spec, ERROR_RETRY_MS)
            return
        except Exception:
            if len(fires) > 1:
                for name, _spec, _upto in fires:
                    await self._fire([name])
                return
            self.log.failure("firing the schedule of {flow} failed", flow=fires[0][0])
            self._retry(fires[0][0], fires[0][1], ERROR_RETRY_MS)
            return
        for name, spec, upto in fires:
            if self.specs.get(name) is not spec:
                continue  # edited meanwhile: the rescan set its next fire
            if results[name]["busy"]:
                self._retry(name, spec, BUSY_RETRY_MS)
            else:
                self.next_at[name] = spec.next_after(upto)

    def _retry(self, name, spec, delay_ms):
        if self.specs.get(name) is spec:
            self.next_at[name] = self._now() + delay_ms
