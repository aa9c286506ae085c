"""
What a schedule did, written in one place (L{record}), and a flow's valid
schedule or the refusal that there is none (L{schedule_of_flow}).

Every fire time that made a run or was skipped (with its reason), every
pause, resume and backfill goes through L{record} into C{schedule_log}
(read with C{GET /flows/{flow}/schedule/log}); an events stream can later be
fed from this same function.
"""

from __future__ import annotations

from maxq import schedule_times
from maxq.errors import NotFound, flow_not_found

# Why a fire time made no run.
OVERLAP = "overlap"
SUMMARY = "earlier_fire_times_not_listed"


def schedule_not_found(flow_name: str, config_error: str | None = None) -> NotFound:
    details = {"flowName": flow_name}
    if config_error:
        details["configError"] = config_error
    return NotFound("SCHEDULE_NOT_FOUND", f"flow {flow_name!r} has no schedule",
                    **details)


def schedule_of_flow(ctx, flow_name: str) -> schedule_times.Schedule:
    """
    The flow's schedule; L{NotFound} C{FLOW_NOT_FOUND} or
    C{SCHEDULE_NOT_FOUND} (with the C{configError} when it is in error).
    """
    if ctx.flows.flow_script(flow_name) is None:
        raise flow_not_found(flow_name)
    config = ctx.flows.config(flow_name)
    spec = schedule_times.schedule_of(config)
    if spec is None:
        raise schedule_not_found(flow_name,
                                 config.error if "schedule" in config.raw else None)
    return spec


async def record(tx, effects, flow_name: str, action: str, now: int, scheduled_at=None,
                 reason: str | None = None, run_id: str | None = None, **details):
    """
    One thing a schedule did: C{action} is C{fired}, C{queued}, C{skipped}
    (with C{reason}), C{released}, C{created}, C{paused}, C{resumed},
    C{backfill} or C{backfill_cancelled}.  Written to the schedule's log
    and, in the same transaction, as a C{schedule} event (SPEC §7).
    """
    effects.event("schedule", run_id, flow_name, data={
        "action": action, "scheduledAt": scheduled_at, "reason": reason, **details})
    await tx.insert_schedule_log({
        "flow_name": flow_name, "action": action, "scheduled_at": scheduled_at,
        "reason": reason, "run_id": run_id, "details": details or None,
        "created_at": now,
    })
