"""
How stages and runs end: a stage whose steps all finished, a flow call's
outcome, and completing or failing a run (which stops everything left).
"""

from __future__ import annotations

from maxq import model, secrets
from maxq.engine.unit import log_event
from maxq.model import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING


def _append_tail(old: str, new: str, limit: int) -> str:
    if not new:
        return old
    text = old + new
    return text[-limit:] if len(text) > limit else text


async def maybe_end_stage(tx, effects, run_id, stage_name, now):
    """
    End the stage if none of its steps is pending or running, and act on
    it: complete the run, or queue the flow callback.
    """
    if await tx.stage_has_unfinished(run_id, stage_name):
        return
    counts = await tx.count_stage_steps(run_id, stage_name)
    stage = await tx.get_stage(run_id, stage_name)
    if stage is None or stage["status"] not in (PENDING, RUNNING):
        return
    ok = counts.get(COMPLETED, 0) == sum(counts.values())
    status = COMPLETED if ok else FAILED
    await tx.update_stage(run_id, stage_name, status=status, completed_at=now)
    effects.event("stage", run_id, stage=stage_name, status=status,
                  previous_status=stage["status"], data={"counts": counts})
    await log_event(
        tx, run_id, "stage", stage_name, "info" if ok else "error",
        f"stage {stage_name} {status}", f"stage_{status}", now, effects, counts=counts,
    )
    run = await tx.get_run(run_id)
    if run["status"] not in model.RUN_ACTIVE:
        return
    if ok and stage["final"]:
        await complete_run(tx, effects, run, now)
        return
    if ok:
        completed, failed = stage_name, None
    else:
        completed, failed = await tx.last_completed_stage(run_id), stage_name
    # A stage re-posted after a retry may end again while its callback
    # from before the retry is still queued: deliver that one only.
    for call in await tx.open_flow_calls(run_id):
        if (call["status"] == PENDING and call["completed_stage"] == completed
                and call["failed_stage"] == failed):
            return
    await tx.insert_flow_call(run_id, completed, failed, now)
    effects.wake = True


async def flow_call_finished(ctx, tx, effects, call_id, result):
    now = ctx.now()
    call = await tx.get_flow_call(call_id)
    if call is None:
        return
    await tx.lock_run(call["run_id"])
    call = await tx.get_flow_call(call_id)
    run = await tx.get_run(call["run_id"])
    limit = ctx.config.max_log_capture
    await tx.update_run(
        run["id"],
        stdout=_append_tail(run["stdout"], secrets.mask_text(result.stdout), limit),
        stderr=_append_tail(run["stderr"], secrets.mask_text(result.stderr), limit),
    )
    if call["status"] != RUNNING:
        return
    ok = result.succeeded
    await tx.update_flow_call(
        call_id, status=COMPLETED if ok else FAILED, exit_code=result.exit_code,
        completed_at=now,
    )
    if run["status"] not in model.RUN_ACTIVE:
        return
    effects.wake = True
    if not ok:
        error = {"reason": "flow_failed", "exitCode": result.exit_code}
        if result.signal is not None:
            error["signal"] = result.signal
        await fail_run(tx, effects, run, now, error)
        return
    if call["failed_stage"] and call["scheduled_stages"] == 0:
        await fail_run(
            tx, effects, run, now,
            {"reason": "stage_failed", "stage": call["failed_stage"]},
        )
        return
    if (await tx.count_unfinished_stages(run["id"]) == 0
            and not await tx.open_flow_calls(run["id"])):
        await complete_run(tx, effects, run, now)


async def _end_run(tx, effects, run, now, status, error, termination_reason, reason,
                   pending_status, running_status):
    """
    Stop everything the run left unfinished, then record how it ended.
    """
    await stop_everything(
        tx, effects, run["id"], now, reason=reason,
        pending_status=pending_status, running_status=running_status,
    )
    await tx.update_run(
        run["id"], status=status, completed_at=now, error=error,
        termination_reason=termination_reason,
    )
    effects.event("run", run["id"], run["flow_name"], status=status,
                  previous_status=run["status"],
                  data={"error": error, "terminationReason": termination_reason})


async def complete_run(tx, effects, run, now):
    await _end_run(tx, effects, run, now, COMPLETED, None, None, reason=CANCELLED,
                   pending_status=CANCELLED, running_status=CANCELLED)
    await log_event(tx, run["id"], "run", run["id"], "info", "run completed",
                    "run_completed", now, effects)


async def fail_run(tx, effects, run, now, error, termination_reason=None,
                   step_reason=model.FLOW_FAILED, pending_status=CANCELLED):
    await _end_run(tx, effects, run, now, FAILED, error, termination_reason,
                   reason=step_reason, pending_status=pending_status,
                   running_status=FAILED)
    await log_event(tx, run["id"], "run", run["id"], "error",
                    f"run failed: {error.get('reason')}", "run_failed", now,
                    effects, error=error)


async def stop_everything(tx, effects, run_id, now, reason, pending_status,
                          running_status):
    """
    Finish every unfinished step, stage and flow call of a run that is
    ending; running processes are terminated after the commit.
    """
    unfinished = await tx.steps_with_status(run_id, [PENDING, RUNNING])
    pending = [r["id"] for r in unfinished if r["status"] == PENDING]
    running = [r for r in unfinished if r["status"] == RUNNING]
    error = {"reason": reason}
    if pending:
        await tx.update_steps(
            run_id, pending, status=pending_status, termination_reason=reason,
            error=error, completed_at=now,
        )
        effects.step_events(run_id, [r for r in unfinished if r["status"] == PENDING],
                            pending_status, error=error)
    if running:
        await tx.update_steps(
            run_id, [r["id"] for r in running], status=running_status,
            termination_reason=reason, error=error, completed_at=now,
        )
        effects.step_events(run_id, running, running_status, error=error)
        effects.kill_steps.extend((run_id, r["id"], r["claim_no"]) for r in running)
        effects.kill_reason = reason
    for stage in await tx.list_stages(run_id):
        if stage["status"] in (PENDING, RUNNING):
            await tx.update_stage(run_id, stage["name"], status=FAILED,
                                  completed_at=now)
            effects.event("stage", run_id, stage=stage["name"], status=FAILED,
                          previous_status=stage["status"], data={"reason": reason})
    for call in await tx.open_flow_calls(run_id):
        if call["status"] == RUNNING:
            effects.kill_flows.append(run_id)
            effects.kill_reason = reason
        await tx.update_flow_call(call["id"], status=CANCELLED, completed_at=now)
