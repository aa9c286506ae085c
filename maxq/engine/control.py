"""
Run control asked for by users: abort, retry a run or a step, pause and
resume.
"""

from __future__ import annotations

from maxq import model
from maxq.engine.completion import fail_run
from maxq.engine.queries import run_view
from maxq.engine.stages import allow_repost
from maxq.engine.unit import log_event
from maxq.errors import Conflict, Invalid, run_not_found, step_not_found_in_run
from maxq.model import ABORTED, CANCELLED, COMPLETED, FAILED, PAUSED, PENDING, RUNNING


def abort_answer(run_id, outcome, killed) -> dict:
    if outcome["alreadyCompleted"]:
        message = f"run {run_id} had already finished"
    else:
        message = f"run {run_id} aborted"
    return {"message": message, "processesKilled": killed, **outcome}


async def abort(ctx, tx, effects, run_id):
    await tx.lock_run(run_id)
    run = await tx.get_run(run_id)
    if run is None:
        raise run_not_found(run_id)
    if run["status"] in model.RUN_FINISHED:
        return {"alreadyCompleted": True}
    now = ctx.now()
    await fail_run(
        tx, effects, run, now, {"reason": ABORTED}, termination_reason=ABORTED,
        step_reason=ABORTED, pending_status=FAILED,
    )
    await log_event(tx, run_id, "run", run_id, "warn", "run aborted", "run_aborted", now,
                    effects)
    return {"alreadyCompleted": False}


async def retry_run(ctx, tx, effects, run_id):
    await tx.lock_run(run_id)
    run = await tx.get_run(run_id)
    if run is None:
        raise run_not_found(run_id)
    if run["status"] == COMPLETED:
        raise Invalid("RUN_COMPLETED", f"run {run_id} completed; nothing to retry",
                       runId=run_id)
    if run["status"] != FAILED:
        raise Conflict("RUN_ACTIVE", f"run {run_id} is {run['status']}",
                       runId=run_id, status=run["status"])
    now = ctx.now()
    failed = await tx.steps_with_status(run_id, [FAILED, CANCELLED])
    await reset_steps(tx, run_id, [r["id"] for r in failed], now)
    effects.step_events(run_id, failed, PENDING, retryCount=0, attempt=1)
    for stage in await tx.list_stages(run_id):
        if stage["status"] == FAILED:
            counts = await tx.count_stage_steps(run_id, stage["name"])
            if counts.get(PENDING):
                await tx.update_stage(run_id, stage["name"], status=RUNNING,
                                      completed_at=None)
                effects.event("stage", run_id, stage=stage["name"], status=RUNNING,
                              previous_status=FAILED, data={"change": "retried"})
    redo = await tx.flow_calls_with_status(run_id, [FAILED, CANCELLED])
    for call in redo:
        # Delivered again, the call will likely post again what it
        # scheduled before it failed: that reuses the stage's records
        # (SPEC §3), even while the retry has the stage running again.
        await tx.update_flow_call(call["id"], status=PENDING, exit_code=None,
                                  worker_id=None, started_at=None, completed_at=None)
        await allow_repost(tx, run_id, call["id"])
    if not failed and not redo:
        # Nothing left to redo but the run failed (its flow scheduled
        # nothing after a stage failed): ask the flow again.
        last_failed = next(
            (s["name"] for s in reversed(await tx.list_stages(run_id))
             if s["status"] == FAILED), None,
        )
        await tx.insert_flow_call(run_id, await tx.last_completed_stage(run_id),
                                  last_failed, now)
    await tx.update_run(run_id, status=RUNNING, error=None, termination_reason=None,
                        completed_at=None)
    effects.event("run", run_id, run["flow_name"], status=RUNNING,
                  previous_status=run["status"], data={"change": "retried"})
    await log_event(tx, run_id, "run", run_id, "info",
                    f"run retried: {len(failed)} steps reset", "run_retried", now,
                    effects)
    effects.wake = True
    return {"run": await run_view(tx, await tx.get_run(run_id)),
            "message": f"run {run_id} retried; {len(failed)} steps reset to pending"}


async def reset_steps(tx, run_id, step_ids, now):
    if not step_ids:
        return
    await tx.update_steps(
        run_id, step_ids, status=PENDING, retry_count=0, error=None, exit_code=None,
        termination_reason=None, completed_at=None, duration_ms=None,
        started_at=None, worker_id=None, queued_at=now, ready_at=now,
    )
    await tx.recount_dependencies(run_id)


async def pause(ctx, tx, effects, run_id):
    await tx.lock_run(run_id)
    run = await tx.get_run(run_id)
    if run is None:
        raise run_not_found(run_id)
    if run["status"] not in (PENDING, RUNNING):
        raise Conflict("RUN_NOT_RUNNING", f"run {run_id} is {run['status']}",
                       runId=run_id, status=run["status"])
    now = ctx.now()
    running = await tx.steps_with_status(run_id, [RUNNING])
    if running:
        # Back to pending without spending a retry.
        await tx.update_steps(
            run_id, [r["id"] for r in running], status=PENDING, worker_id=None,
            started_at=None, queued_at=now, ready_at=now,
        )
        effects.step_events(run_id, running, PENDING,
                            terminationReason=model.PAUSED_BY_USER)
        effects.kill_steps.extend((run_id, r["id"], r["claim_no"]) for r in running)
        effects.kill_reason = model.PAUSED_BY_USER
    await tx.update_run(run_id, status=PAUSED)
    effects.event("run", run_id, run["flow_name"], status=PAUSED,
                  previous_status=run["status"])
    await log_event(tx, run_id, "run", run_id, "info",
                    f"run paused; {len(running)} running steps stopped", "run_paused",
                    now, effects)
    return {"run": await run_view(tx, await tx.get_run(run_id)),
            "message": f"run {run_id} paused"}


async def resume(ctx, tx, effects, run_id):
    await tx.lock_run(run_id)
    run = await tx.get_run(run_id)
    if run is None:
        raise run_not_found(run_id)
    if run["status"] != PAUSED:
        raise Conflict("RUN_NOT_PAUSED", f"run {run_id} is {run['status']}",
                       runId=run_id, status=run["status"])
    now = ctx.now()
    status = RUNNING if run["started_at"] else PENDING
    await tx.update_run(run_id, status=status)
    effects.event("run", run_id, run["flow_name"], status=status, previous_status=PAUSED)
    await log_event(tx, run_id, "run", run_id, "info", "run resumed", "run_resumed", now,
                    effects)
    effects.wake = True
    return {"run": await run_view(tx, await tx.get_run(run_id)),
            "message": f"run {run_id} resumed"}


async def retry_step(ctx, tx, effects, run_id, step_id):
    await tx.lock_run(run_id)
    run = await tx.get_run(run_id)
    if run is None:
        raise run_not_found(run_id)
    step = await tx.get_step(run_id, step_id)
    if step is None:
        raise step_not_found_in_run(run_id, step_id)
    if run["status"] == COMPLETED:
        raise Invalid("RUN_COMPLETED", f"run {run_id} completed", runId=run_id)
    if run["status"] not in (FAILED, PAUSED):
        raise Conflict("RUN_ACTIVE",
                       f"run {run_id} is {run['status']}; only a failed or paused "
                       "run's steps can be retried", runId=run_id,
                       status=run["status"])
    if step["status"] not in (FAILED, CANCELLED):
        raise Conflict("STEP_NOT_FAILED", f"step {step_id} is {step['status']}",
                       stepId=step_id, status=step["status"])
    now = ctx.now()
    # The step, and every step that failed or was cancelled because of it.
    others = await tx.steps_with_status(run_id, [FAILED, CANCELLED])
    reset = [step_id] + [
        r["id"] for r in others
        if r["id"] != step_id and (r["error"] or {}).get("failedStep") == step_id
    ]
    await reset_steps(tx, run_id, reset, now)
    effects.step_events(run_id, [step] + [r for r in others if r["id"] in set(reset[1:])],
                        PENDING, retryCount=0, attempt=1)
    stages = {step["stage"]} | {
        r["stage"] for r in others if r["id"] in set(reset)
    }
    for name in stages:
        before = await tx.get_stage(run_id, name)
        await tx.update_stage(run_id, name, status=RUNNING, completed_at=None)
        effects.event("stage", run_id, stage=name, status=RUNNING,
                      previous_status=before["status"] if before else None,
                      data={"change": "retried"})
    if run["status"] == FAILED:
        for call in await tx.flow_calls_with_status(run_id, [CANCELLED]):
            await tx.update_flow_call(call["id"], status=PENDING, worker_id=None,
                                      started_at=None, completed_at=None)
        await tx.update_run(run_id, status=RUNNING, error=None,
                            termination_reason=None, completed_at=None)
        effects.event("run", run_id, run["flow_name"], status=RUNNING,
                      previous_status=FAILED, data={"change": "retried"})
    await log_event(tx, run_id, "step", step_id, "info",
                    f"step {step_id} retried with {len(reset) - 1} dependents",
                    "step_retried", now, effects, steps=reset)
    effects.wake = True
    return {"run": await run_view(tx, await tx.get_run(run_id)),
            "steps": reset, "message": f"step {step_id} retried"}
