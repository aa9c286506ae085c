"""
A unit of work: one store transaction and the effects applied after it.

Each operation is one store transaction that reads what it needs, decides,
and writes every row it changes, so a state change is all or nothing.  What
a transaction cannot do itself (terminate processes, wake the scheduler) it
records in an L{Effects} that is applied once the transaction committed.

The replay rule: a backend may run a unit again (PostgreSQL, a lost deadlock
race), so L{transact} starts each attempt with empty L{Effects}, and a unit
must keep no state outside them (nor outside its return value): whatever it
counted or decided in a failed attempt is forgotten.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import defer

from maxq.flows import FlowsRoot
from maxq.model import ABORTED
from maxq.store.history import CreatedSteps

# PostgreSQL's NOTIFY payload limit is 8000 bytes.
NOTIFY_LIMIT = 7000


class ProcessControl(Protocol):
    """
    What the engine asks of whoever runs processes (the scheduler).
    """

    def terminate_steps(self, steps: list[tuple[str, str, int]], reason: str) -> int:
        """
        Terminate the processes of C{(run_id, step_id, claim_no)}; returns
        how many were signalled.
        """

    def terminate_flow(self, run_id: str, reason: str) -> int:
        ...

    def wake(self) -> None:
        ...

    def wake_at(self, when_ms: int) -> None:
        ...


class NoProcesses:
    def terminate_steps(self, steps, reason):
        return 0

    def terminate_flow(self, run_id, reason):
        return 0

    def wake(self):
        pass

    def wake_at(self, when_ms):
        pass


@dataclass
class Effects:
    kill_steps: list[tuple[str, str, int]] = field(default_factory=list)
    kill_flows: list[str] = field(default_factory=list)
    kill_reason: str = ABORTED
    wake: bool = False
    wake_at: list[int] = field(default_factory=list)
    # Operations (maxq.operations): what started and ended, counted in
    # memory after the commit (maxq.metrics tallies), and the runs that
    # ended, whose notifications are written before it.
    tallies: list[tuple] = field(default_factory=list)
    ended_runs: list[dict] = field(default_factory=list)
    # The unit's events (SPEC §7), written by transact in one batch at the
    # end of the unit, inside its transaction.
    events: list[dict] = field(default_factory=list)

    def event(self, type: str, run_id: str | None, flow_name: str | None = None, *,
              stage: str | None = None, step_id: str | None = None,
              status: str | None = None, previous_status: str | None = None,
              data: dict | None = None, at: int | None = None) -> None:
        """
        Record an event of this unit: the one call every room (and every
        capability adding its own event types: C{schedule},
        C{notification}, ...) makes.  C{flow_name} may be left out when
        C{run_id} is given (the run's is used); C{at} defaults to the
        commit's time.
        """
        self.events.append({
            "type": type, "run_id": run_id, "flow_name": flow_name, "stage": stage,
            "step_id": step_id, "status": status, "previous_status": previous_status,
            "data": data or {}, "at": at,
        })

    def steps_created(self, run_id: str, stage: str, created_at: int) -> None:
        """
        The C{step} events (C{pending}, from no status) of the steps of
        C{stage} just inserted with C{created_at}, made by the store from
        the rows themselves (L{CreatedSteps}) in one statement.
        """
        self.events.append(CreatedSteps(run_id, stage, created_at, created_at))

    def step_events(self, run_id: str, steps, status: str,
                    previous_status: str | None = None, **data) -> None:
        """
        One C{step} event per step of a bulk change: C{steps} are rows (with
        C{id}, and C{stage} / C{status} / C{retry_count} when known) or ids.
        """
        for step in steps:
            if isinstance(step, str):
                step = {"id": step}
            detail = dict(data)
            if "retry_count" in step and "retryCount" not in detail:
                detail["retryCount"] = step["retry_count"]
            self.event("step", run_id, stage=step.get("stage"), step_id=step["id"],
                       status=status,
                       previous_status=previous_status or step.get("status"),
                       data=detail)


@dataclass(frozen=True)
class Context:
    """
    What the rules need besides the transaction: the store (for reads
    outside a unit), the flows, the configuration and the clock.
    """

    store: object
    flows: FlowsRoot
    config: object
    clock: object
    # This server's view of the limits (maxq.engine.limits.FlowControl).
    control: object = None

    def now(self) -> int:
        return int(self.clock.seconds() * 1000)


async def transact(store, control: ProcessControl, broadcast: bool, worker_id: str,
                   fn, *args, hooks=None, clock=None, on_events=None):
    """
    Run C{fn(tx, effects, *args)} in a transaction, then apply its effects.
    Returns the unit's result and how many processes were terminated.
    C{hooks} (L{maxq.operations.OperationsHooks}, or None) writes the
    notifications of ended runs before the commit and counts after it.
    The unit's events are written last, in the same transaction (one
    batched insert); C{on_events()} is called after a commit that wrote
    some (the streams of this server wake up).
    """
    [outcome] = await transact_many(store, control, broadcast, worker_id, [(fn, args)],
                                    hooks=hooks, clock=clock, on_events=on_events)
    return outcome


async def transact_many(store, control: ProcessControl, broadcast: bool, worker_id: str,
                        calls: list, hooks=None, clock=None, on_events=None) -> list:
    """
    Run each C{fn(tx, effects, *args)} of C{calls} (C{(fn, args)} pairs),
    in order, in one transaction, each with effects of its own, as if each
    were a unit of L{transact} committed one after the other; returns
    their C{(result, terminated)} in order.  If any raises, nothing is
    kept and the exception propagates (L{TurnBatch} then runs each alone).
    """
    effects_of = [Effects() for _ in calls]

    async def unit(tx):
        results = []
        for (fn, args), effects in zip(calls, effects_of):
            # A backend may run the unit again (a lost deadlock race): start
            # each attempt with nothing decided.
            effects.__init__()
            results.append(await fn(tx, effects, *args))
            if hooks is not None and effects.ended_runs:
                await hooks.before_commit(tx, effects)
        events = [event for effects in effects_of for event in effects.events]
        if events:
            now = int((clock.seconds() if clock is not None else time.time()) * 1000)
            for event in events:
                if type(event) is dict and event["at"] is None:
                    event["at"] = now
            await tx.insert_events(events)
        if broadcast:
            for effects in effects_of:
                if (effects.wake or effects.wake_at or effects.kill_steps
                        or effects.kill_flows or effects.events):
                    await tx.notify(announcement(worker_id, effects))
        return results

    results = await store.transaction(unit)
    outcomes = []
    wrote_events = False
    for result, effects in zip(results, effects_of):
        killed = apply(control, effects)
        if hooks is not None and (effects.tallies or effects.ended_runs):
            hooks.after_commit(effects)
        wrote_events = wrote_events or bool(effects.events)
        outcomes.append((result, killed))
    if wrote_events and on_events is not None:
        on_events()
    return outcomes


class TurnBatch:
    """
    Units submitted during one reactor turn, run together in one
    transaction on the next (see L{transact_many}): step exits that the
    reactor reports together cost one commit, not one each.  When the
    shared transaction fails, each unit runs again alone, so an error
    reaches only the caller whose unit raised it.

    C{run_many(calls)} and C{run_one(fn, *args)} are the engine's
    L{transact_many} and L{transact}, bound to its store and hooks.
    """

    def __init__(self, clock, run_many, run_one):
        self.clock = clock
        self.run_many = run_many
        self.run_one = run_one
        self._pending: list = []
        self._call = None

    def submit(self, fn, *args) -> defer.Deferred:
        """
        A Deferred of C{(result, terminated)} once the unit has committed.
        """
        d = defer.Deferred()
        self._pending.append((fn, args, d))
        if self._call is None:
            self._call = self.clock.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._call = None
        pending, self._pending = self._pending, []
        defer.ensureDeferred(self._run(pending))

    async def _run(self, pending: list) -> None:
        if len(pending) > 1:
            try:
                outcomes = await self.run_many([(fn, args) for fn, args, _ in pending])
            except Exception:
                # Nothing was kept: each unit runs alone below, and its
                # error, if it has one, reaches its own caller.
                pass
            else:
                for (_, _, d), outcome in zip(pending, outcomes):
                    d.callback(outcome)
                return
        for fn, args, d in pending:
            try:
                outcome = await self.run_one(fn, *args)
            except Exception:
                d.errback()
            else:
                d.callback(outcome)


def announcement(worker_id: str, effects: Effects) -> str:
    """
    What the other servers sharing the database must hear: wake up, when
    a retry is due, which processes to terminate.
    """
    message = {"from": worker_id}
    if effects.wake or effects.wake_at or effects.kill_steps or effects.kill_flows:
        message["wake"] = True
    if effects.events:
        # Only a hint: the streams read what is new from the table.
        message["events"] = True
    if effects.wake_at:
        message["at"] = effects.wake_at
    if effects.kill_steps or effects.kill_flows:
        message.update(kill=effects.kill_steps, flows=effects.kill_flows,
                       reason=effects.kill_reason)
    text = json.dumps(message, separators=(",", ":"))
    if len(text) > NOTIFY_LIMIT:
        # Too many to name: the other servers find them by polling.
        text = json.dumps({"from": worker_id, "wake": True, "recheck": True,
                           "events": True})
    return text


def apply(control: ProcessControl, effects: Effects) -> int:
    killed = 0
    if effects.kill_steps:
        killed += control.terminate_steps(effects.kill_steps, effects.kill_reason)
    for run_id in effects.kill_flows:
        killed += control.terminate_flow(run_id, effects.kill_reason)
    for when in effects.wake_at:
        control.wake_at(when)
    if effects.wake:
        control.wake()
    return killed


async def log_event(tx, run_id, entity_type, entity_id, level, message, event, now,
                    effects: Effects | None = None, **extra):
    """
    A log row written by the server itself (C{metadata.source} is C{server});
    with C{effects}, also its C{log} event.
    """
    row = {
        "run_id": run_id,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "level": level,
        "message": message,
        "metadata": {"event": event, "source": "server", **extra},
        "created_at": now,
    }
    row["id"] = await tx.insert_log(row)
    if effects is not None:
        log_entry_event(effects, row)


def log_entry_event(effects: Effects, row: dict) -> None:
    """
    The C{log} event of a log row just written.
    """
    stage = row["entity_id"] if row["entity_type"] == "stage" else None
    step_id = row["entity_id"] if row["entity_type"] == "step" else None
    effects.event("log", row["run_id"], stage=stage, step_id=step_id, at=row["created_at"],
                  data={"id": row["id"], "entityType": row["entity_type"],
                        "entityId": row["entity_id"], "level": row["level"],
                        "message": row["message"], "metadata": row["metadata"]})
