"""
Backfills (SPEC §5): one run (C{trigger: "backfill"}) for each fire time
of a flow's schedule in C{[from, to]}, started oldest first with at most
C{maxActiveRuns} at once; a cancel removes those not started yet.

A backfill's runs are all created at once, C{pending} and C{held}
(C{held = 'backfill'}: no flow call yet, so nothing claims them); each time
one of them ends (L{advance}, from the end of the run), the oldest held
ones are released up to the limit, and when none is left unfinished the
backfill is C{completed}.
"""

from __future__ import annotations

import uuid
from typing import Any

from maxq import schedule_times as times
from maxq.engine import limits
from maxq.engine.runs import insert_run, new_run
from maxq.engine.schedule_log import record, schedule_of_flow
from maxq.errors import Invalid, NotFound, validation_error

BACKFILL = "backfill"
REPROCESS = ("none", "failed", "all")
RUNNING, COMPLETED, CANCELLED = "running", "completed", "cancelled"
OPEN = ("pending", "running", "paused")
MAX_ACTIVE = 1000
LIST_LIMIT = 100
_KEYS = {"from", "to", "input", "reprocess", "maxActiveRuns", "dryRun"}


# 3000-01-01T00:00:00Z: later times are refused, not computed.
MAX_EPOCH_MS = 32_503_680_000_000


def _epoch_ms(body: dict, key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not (
            0 <= value < MAX_EPOCH_MS):
        raise validation_error(f"{key} is required: a time in epoch milliseconds "
                               "(before the year 3000)", field=key)
    return value


def check_backfill(ctx, flow_name: str, body: Any) -> dict:
    """
    The backfill a request asks for, with its fire times; refused as a
    whole (C{VALIDATION_ERROR}, C{NO_SCHEDULE}, C{TOO_MANY_RUNS}).
    """
    if ctx.flows.flow_script(flow_name) is None:
        schedule_of_flow(ctx, flow_name)  # FLOW_NOT_FOUND
    if not isinstance(body, dict):
        raise validation_error("body must be a JSON object")
    unknown = set(body) - _KEYS
    if unknown:
        raise validation_error("unknown keys in body", keys=sorted(unknown))
    start, end = _epoch_ms(body, "from"), _epoch_ms(body, "to")
    if start > end:
        raise validation_error("from must not be after to", field="from")
    reprocess = body.get("reprocess", "none")
    if reprocess not in REPROCESS:
        raise validation_error("reprocess must be one of " + ", ".join(REPROCESS),
                               field="reprocess")
    active = body.get("maxActiveRuns", 1)
    if isinstance(active, bool) or not isinstance(active, int) or not (
            1 <= active <= MAX_ACTIVE):
        raise validation_error(f"maxActiveRuns must be an integer from 1 to {MAX_ACTIVE}",
                               field="maxActiveRuns")
    dry = body.get("dryRun", False)
    if not isinstance(dry, bool):
        raise validation_error("dryRun must be true or false", field="dryRun")
    try:
        spec = schedule_of_flow(ctx, flow_name)
    except NotFound as e:
        raise Invalid("NO_SCHEDULE", f"flow {flow_name!r} has no valid schedule to backfill",
                      flowName=flow_name, **{k: v for k, v in e.details.items()
                                             if k == "configError"}) from None
    fire_times = times.backfill_times(spec, start, end)
    if fire_times is None:
        raise Invalid("TOO_MANY_RUNS",
                      f"more than {times.MAX_BACKFILL} fire times between from and to",
                      limit=times.MAX_BACKFILL)
    return {"flow_name": flow_name, "from": start, "to": end, "times": fire_times,
            "input": body["input"] if "input" in body else spec.input,
            "reprocess": reprocess, "max_active": active, "dry_run": dry}


def _keep(reprocess: str, statuses: list[str] | None) -> bool:
    if not statuses or reprocess == "all":
        return True
    return reprocess == "failed" and statuses[-1] == "failed"


async def create_backfill(ctx, tx, effects, plan: dict):
    """
    Make the backfill and its held runs, and start the first ones; with
    C{dry_run}, only say what it would make.  Returns the answer's shape.
    """
    now = ctx.now()
    flow_name = plan["flow_name"]
    existing = await tx.runs_at(flow_name, plan["times"])
    wanted = [t for t in plan["times"] if _keep(plan["reprocess"], existing.get(t))]
    skipped = [t for t in plan["times"] if t not in set(wanted)]
    answer = {"id": None, "flowName": flow_name, "from": plan["from"], "to": plan["to"],
              "status": "dryRun" if plan["dry_run"] else RUNNING,
              "runs": [{"id": None, "scheduledAt": t} for t in wanted],
              "skipped": skipped}
    if plan["dry_run"]:
        return answer
    backfill_id = str(uuid.uuid4())
    await tx.insert_backfill({
        "id": backfill_id, "flow_name": flow_name, "from_at": plan["from"],
        "to_at": plan["to"], "status": RUNNING, "reprocess": plan["reprocess"],
        "max_active": plan["max_active"], "input": plan["input"], "skipped": skipped,
        "created_at": now, "completed_at": None,
    })
    runs = []
    priority = limits.run_priority(ctx.control, flow_name, {})
    for at in wanted:
        run = new_run(flow_name, now, input=plan["input"], trigger=BACKFILL,
                      scheduled_at=at, backfill_id=backfill_id, held=BACKFILL,
                      priority=priority)
        await insert_run(tx, effects, run, start=False)
        runs.append({"id": run["id"], "scheduledAt": at})
    await record(tx, effects, flow_name, "backfill", now, backfillId=backfill_id,
                 runs=len(runs), skipped=len(skipped))
    await advance(tx, effects, backfill_id, now)
    answer.update(id=backfill_id, runs=runs,
                  status=RUNNING if runs else COMPLETED)
    return answer


async def advance(tx, effects, backfill_id: str, now: int):
    """
    Start the oldest held runs of a running backfill up to its limit, and
    complete it when none of its runs is left unfinished.
    """
    backfill = await tx.lock_backfill(backfill_id)
    if backfill is None or backfill["status"] != RUNNING:
        return
    runs = await tx.backfill_runs(backfill_id)
    active = sum(1 for r in runs if r["held"] is None and r["status"] in OPEN)
    held = [r for r in runs if r["held"] is not None and r["status"] == "pending"]
    for run in held[:max(0, backfill["max_active"] - active)]:
        await tx.release_run(run["id"], now)
        effects.wake = True
        active += 1
    if active == 0 and not held:
        await tx.update_backfill(backfill_id, status=COMPLETED, completed_at=now)


async def cancel_backfill(ctx, tx, effects, backfill_id: str):
    """
    Cancel a running backfill: its runs not started yet are removed, the
    running ones go on.  Idempotent.
    """
    backfill = await tx.lock_backfill(backfill_id)
    if backfill is None:
        raise backfill_not_found(backfill_id)
    if backfill["status"] == RUNNING:
        now = ctx.now()
        await tx.update_backfill(backfill_id, status=CANCELLED, completed_at=now)
        removed = 0
        for run in await tx.backfill_runs(backfill_id):
            if run["status"] == "pending" and await tx.delete_unstarted_run(run["id"]):
                removed += 1
        await record(tx, effects, backfill["flow_name"], "backfill_cancelled", now,
                     backfillId=backfill_id, removed=removed)
    return await _view(tx, await tx.get_backfill(backfill_id))


def backfill_not_found(backfill_id: str) -> NotFound:
    return NotFound("BACKFILL_NOT_FOUND", f"backfill {backfill_id} not found",
                    backfillId=backfill_id)


async def _view(tx, backfill: dict) -> dict:
    runs = await tx.backfill_runs(backfill["id"])
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["status"]] = counts.get(run["status"], 0) + 1
    return {**backfill, "runs": runs, "counts": counts}


async def get_backfill(ctx, backfill_id: str) -> dict:
    async def read(tx):
        backfill = await tx.get_backfill(backfill_id)
        if backfill is None:
            raise backfill_not_found(backfill_id)
        return await _view(tx, backfill)

    return await ctx.store.read(read)


async def list_backfills(ctx, flow_name: str) -> list[dict]:
    if ctx.flows.flow_script(flow_name) is None:
        schedule_of_flow(ctx, flow_name)  # FLOW_NOT_FOUND

    async def read(tx):
        return [await _view(tx, b) for b in await tx.list_backfills(flow_name, LIST_LIMIT)]

    return await ctx.store.read(read)
