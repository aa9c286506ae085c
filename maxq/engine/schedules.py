"""
Schedules in the database (SPEC §5): a fire makes its runs in one
transaction; pause and resume; the state the API shows; and what the end
of a scheduled or backfill run releases.

A fire takes the flow's C{schedules} row (on PostgreSQL with C{FOR UPDATE
SKIP LOCKED}: a row another server is firing is left to it, and this one
tries again shortly), handles every fire time after the row's
C{watermark} up to now (catch-up rules in L{maxq.schedule_times}), and
moves the watermark; the unique key on C{(flow_name, scheduled_at)} of
scheduled runs is the backstop.  A queued run (overlap C{queue}) is
created C{pending} and C{held}: it has no flow call, so nothing claims it,
until the earlier scheduled runs of its flow have ended; then the oldest
held one gets its first flow call (L{run_ended}).
"""

from __future__ import annotations

from maxq import metrics
from maxq import schedule_times as times
from maxq.engine import backfills
from maxq.engine import limits
from maxq.engine.runs import insert_run, new_run
from maxq.engine.schedule_log import OVERLAP, SUMMARY, record, schedule_of_flow

SCHEDULE = "schedule"
HELD_OVERLAP = "overlap"
# Fire times looked at in one fire; older ones are summarised in one line.
MAX_DUE = 2 * times.MAX_CATCHUP


def fresh_row(flow_name: str, spec: times.Schedule, watermark: int, now: int,
              paused: bool | None = None) -> dict:
    """
    A schedule seen for the first time: flow.yaml's C{paused} is its first
    state, and no fire time before now is owed.
    """
    return {"flow_name": flow_name, "paused": int(spec.paused if paused is None
                                                  else paused),
            "watermark": watermark, "last_at": None, "last_run_id": None,
            "created_at": now, "updated_at": now}


async def fire(ctx, tx, effects, flow_name: str, spec: times.Schedule, upto: int):
    """
    Handle the flow's fire times up to C{upto} (the fire time a timer was
    set for, or now).  Returns C{{"busy", "paused", "runs"}}: C{busy} when
    another server holds the schedule (try again soon).
    """
    now = ctx.now()
    upto = max(upto, now)
    row = await tx.lock_schedule(flow_name)
    if row is None:
        if not await tx.insert_schedule(fresh_row(flow_name, spec, upto, now)):
            return {"busy": True, "paused": False, "runs": []}
        await record(tx, effects, flow_name, "created", now, paused=spec.paused)
        return {"busy": False, "paused": spec.paused, "runs": []}
    if row["paused"]:
        return {"busy": False, "paused": True, "runs": []}
    due, truncated = times.due_times(spec, row["watermark"], upto, MAX_DUE)
    if not due:
        return {"busy": False, "paused": False, "runs": []}
    to_run, skipped = times.plan_catchup(due, upto, spec.catchup, spec.catchup_window_ms)
    if truncated:
        await record(tx, effects, flow_name, "skipped", now, scheduled_at=due[0] - 1,
                     reason=SUMMARY, after=row["watermark"], before=due[0])
    for at, reason in skipped:
        await record(tx, effects, flow_name, "skipped", now, scheduled_at=at,
                     reason=reason)
        _count(effects, flow_name, "skipped")
    started, held = await tx.open_scheduled_runs(flow_name)
    if held and not started and await _release_next(tx, effects, flow_name, now):
        # Nothing is ahead of a queued run (it was paused when the run
        # before it ended): it starts now.
        started, held = 1, held - 1
    made = []
    last = None
    priority = limits.run_priority(ctx.control, flow_name, {})
    missed = {t for t in to_run if upto - t > times.ON_TIME_GRACE_MS}
    for at in to_run:
        busy = started + held > 0
        overlap = spec.overlap
        if overlap == "skip" and at in missed and spec.catchup == "all":
            # Catching up on every missed time means one after the other.
            overlap = "queue"
        if busy and overlap == "skip":
            await record(tx, effects, flow_name, "skipped", now, scheduled_at=at,
                         reason=OVERLAP)
            _count(effects, flow_name, "skipped")
            continue
        wait = busy and overlap == "queue"
        run = new_run(flow_name, now, input=spec.input, trigger=SCHEDULE,
                      scheduled_at=at, held=HELD_OVERLAP if wait else None,
                      priority=priority)
        if not await insert_run(tx, effects, run, start=not wait, once=True):
            continue  # made already (the unique key): by another server
        await record(tx, effects, flow_name, "queued" if wait else "fired", now,
                     scheduled_at=at, run_id=run["id"])
        _count(effects, flow_name, "queued" if wait else "fired")
        if wait:
            held += 1
        else:
            started += 1
        made.append({"id": run["id"], "scheduled_at": at})
        last = (at, run["id"])
    columns = {"watermark": upto, "updated_at": now}
    if last is not None:
        columns.update(last_at=last[0], last_run_id=last[1])
    await tx.update_schedule(flow_name, **columns)
    return {"busy": False, "paused": False, "runs": made}


async def fire_many(ctx, tx, effects, fires):
    """
    Several flows' fires in one transaction: C{fires} is a list of
    C{(flow_name, schedule, upto)}; returns C{{flow_name: what L{fire}
    returns}}.  Flows whose fire times fall on the same instant are fired
    together, so that a hundred of them cost one commit, not a hundred.
    """
    results = {}
    for flow_name, spec, upto in fires:
        results[flow_name] = await fire(ctx, tx, effects, flow_name, spec, upto)
    return results


def _count(effects, flow_name: str, outcome: str) -> None:
    # maxq_schedule_fires_total{flow,outcome}, counted after the commit.
    effects.tallies.append(metrics.tally(metrics.SCHEDULE_FIRED, flow_name, outcome))


async def set_paused(ctx, tx, effects, flow_name: str, paused: bool):
    """
    Pause or resume the flow's schedule (idempotent); resuming owes no fire
    time of the paused period.  Returns the flow's entry.
    """
    spec = schedule_of_flow(ctx, flow_name)
    now = ctx.now()
    if not await tx.insert_schedule(fresh_row(flow_name, spec, now, now, paused)):
        row = await tx.lock_schedule(flow_name, wait=True)
        if bool(row["paused"]) != paused:
            columns = {"paused": int(paused), "updated_at": now}
            if not paused:
                columns["watermark"] = now
            await tx.update_schedule(flow_name, **columns)
            await record(tx, effects, flow_name, "paused" if paused else "resumed", now)
    else:
        await record(tx, effects, flow_name, "paused" if paused else "resumed", now)
    row = (await tx.get_schedules([flow_name]))[flow_name]
    return flow_name, spec, row


async def get_entry(ctx, flow_name: str):
    """
    C{(flow_name, schedule, row or None)} of one flow.
    """
    spec = schedule_of_flow(ctx, flow_name)
    rows = await ctx.store.read(lambda tx: tx.get_schedules([flow_name]))
    return flow_name, spec, rows.get(flow_name)


def scheduled_flows(flows) -> dict[str, times.Schedule]:
    """
    Every flow with a valid schedule: one C{stat} of each flow.yaml (the
    configs are cached by stat) and of each flow.sh (cached for a second).
    """
    found = {}
    for name in flows.flow_names():
        spec = times.schedule_of(flows.config(name))
        if spec is not None and flows.flow_script(name) is not None:
            found[name] = spec
    return found


async def list_entries(ctx):
    specs = scheduled_flows(ctx.flows)
    rows = await ctx.store.read(lambda tx: tx.get_schedules(sorted(specs)))
    return [(name, specs[name], rows.get(name)) for name in sorted(specs)]


async def list_log(ctx, flow_name: str, limit: int):
    schedule_of_flow(ctx, flow_name)
    return await ctx.store.read(lambda tx: tx.list_schedule_log(flow_name, limit))


async def run_ended(tx, effects, run: dict, now: int):
    """
    A scheduled run ended: start the oldest run queued behind it once no
    earlier scheduled run of the flow is unfinished.  A backfill run ended:
    its backfill may start more, or be done.
    """
    if run.get("trigger") == SCHEDULE:
        flow_name = run["flow_name"]
        # Serialises the ends of two runs of the flow (two servers).
        await tx.lock_schedule(flow_name, wait=True)
        started, held = await tx.open_scheduled_runs(flow_name)
        if held and not started:
            await _release_next(tx, effects, flow_name, now)
    elif run.get("backfill_id"):
        await backfills.advance(tx, effects, run["backfill_id"], now)


async def _release_next(tx, effects, flow_name: str, now: int) -> bool:
    """
    Start the oldest queued run of the flow's schedule, if any waits.
    """
    for nxt in await tx.held_runs(1, flow_name=flow_name):
        await tx.release_run(nxt["id"], now)
        effects.wake = True
        await record(tx, effects, flow_name, "released", now,
                     scheduled_at=nxt["scheduled_at"], run_id=nxt["id"])
        return True
    return False
