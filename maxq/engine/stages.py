"""
Scheduling a stage (C{POST /runs/{id}/steps}): its validation, the reuse of
a stage's records after a retry, and the re-posts of a redelivered flow call.
"""

from __future__ import annotations

from typing import Any

from maxq import model
from maxq.engine import limits
from maxq.engine.completion import maybe_end_stage
from maxq.errors import Conflict, Invalid, run_not_found
from maxq.model import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING


async def check_stage(ctx, run_id: str, body: Any):
    """
    Validate everything that needs no transaction; returns the parsed stage.
    """
    spec = model.parse_stage_request(body, ctx.config.max_steps_per_stage,
                                     ctx.config.max_dependencies_per_stage)
    seen: set[str] = set()
    for step in spec.steps:
        if step.id in seen:
            raise Invalid(
                "DUPLICATE_STEP_ID", f"step id {step.id!r} appears twice",
                stepId=step.id,
            )
        seen.add(step.id)
    run = await ctx.store.read(lambda tx: tx.get_run(run_id))
    if run is None:
        raise run_not_found(run_id)
    checked: set[str] = set()
    for step in spec.steps:
        if step.name in checked:
            continue
        if ctx.flows.step_script(run["flow_name"], step.name) is None:
            raise Invalid(
                "STEP_NOT_FOUND",
                f"flow {run['flow_name']!r} has no executable step script "
                f"steps/{step.name}/step.sh",
                stepId=step.id,
                name=step.name,
            )
        checked.add(step.name)
    return spec


async def schedule_stage(ctx, tx, effects, run_id, spec):
    """
    Insert the stage and its steps (validated by L{check_stage}).
    """
    await tx.lock_run(run_id)
    run = await tx.get_run(run_id)
    if run is None:
        raise run_not_found(run_id)
    if run["status"] in model.RUN_FINISHED:
        raise Conflict(
            "RUN_NOT_ACTIVE", f"run {run_id} is {run['status']}",
            runId=run_id, status=run["status"],
        )
    stage = await tx.get_stage(run_id, spec.stage)
    if stage is not None and stage.get("flow_call_interrupted"):
        repeat = await redelivered_stage(tx, run_id, stage, spec)
        if repeat is not None:
            return repeat
    if stage is not None and stage["status"] in (PENDING, RUNNING):
        raise Conflict(
            "STAGE_EXISTS",
            f"stage {spec.stage!r} is already scheduled and unfinished",
            stage=spec.stage,
        )
    ids = [s.id for s in spec.steps]
    existing = await tx.get_step_states(run_id, ids)
    for step_id, (stage_name, _status) in existing.items():
        if stage is None or stage_name != spec.stage:
            raise Invalid(
                "DUPLICATE_STEP_ID",
                f"step id {step_id!r} already exists in this run",
                stepId=step_id,
            )
    id_set = set(ids)
    external = {d for s in spec.steps for d in s.depends_on if d not in id_set}
    states = await tx.get_step_states(run_id, external) if external else {}
    earlier_completed = {
        sid for sid, (stage_name, status) in states.items()
        if status == COMPLETED and stage_name != spec.stage
    }
    model.check_dag(spec.steps, earlier_completed)
    columns = limits.stage_columns(ctx.control, run["flow_name"], run, spec)
    await limits.check_stage_control(tx, run_id, spec, columns)

    now = ctx.now()
    # Re-scheduling a finished stage (after a retry or as a recovery)
    # reuses its records: completed steps stay completed and do not run
    # again; every other step of the old stage is replaced.
    kept = {sid for sid, (_stage, status) in existing.items() if status == COMPLETED}
    # Which flow invocation scheduled the stage, should it be cut short.
    calling = [c["id"] for c in await tx.open_flow_calls(run_id)
               if c["status"] == RUNNING][:1] or [None]
    if stage is not None:
        old = await tx.steps_with_status(
            run_id, [PENDING, RUNNING, FAILED, CANCELLED], stage=spec.stage
        )
        await tx.delete_steps(run_id, [r["id"] for r in old])
        await tx.update_stage(
            run_id, spec.stage, status=RUNNING, final=int(spec.final),
            fail_fast=int(spec.fail_fast), completed_at=None,
            flow_call_id=calling[0], flow_call_interrupted=0,
        )
        effects.event("stage", run_id, stage=spec.stage, status=RUNNING,
                      previous_status=stage["status"], data={"change": "scheduled"})
    else:
        await tx.insert_stage(
            {
                "run_id": run_id, "name": spec.stage, "status": RUNNING,
                "final": int(spec.final), "fail_fast": int(spec.fail_fast),
                "created_at": now, "flow_call_id": calling[0],
            }
        )
        effects.event("stage", run_id, stage=spec.stage, status=RUNNING,
                      data={"change": "scheduled", "final": spec.final})
    rows, edges = [], []
    for step in spec.steps:
        if step.id in kept:
            continue
        pending_deps = [d for d in step.depends_on if d in id_set and d not in kept]
        rows.append(
            {
                "run_id": run_id, "id": step.id, "stage": spec.stage,
                "name": step.name, "status": PENDING,
                "depends_on": step.depends_on, "deps_left": len(pending_deps),
                "max_retries": step.max_retries, "retry_count": 0,
                "retry_delay_ms": step.retry_delay_ms,
                "retry_backoff": step.retry_backoff,
                "timeout_seconds": step.timeout_seconds, "env": step.env,
                "fields": {}, "created_at": now, "queued_at": now, "ready_at": now,
                **columns[step.id],
            }
        )
        if columns[step.id]["gate"]:
            ctx.control.poke()
        edges.extend((step.id, d) for d in step.depends_on)
    await tx.insert_steps(run_id, rows, edges)
    if any(row["id"] in existing for row in rows):
        # Steps that replace earlier ones say what they were.
        for row in rows:
            effects.event("step", run_id, stage=spec.stage, step_id=row["id"], status=PENDING,
                          previous_status=existing.get(row["id"], (None, None))[1],
                          data={"attempt": 1, "retryCount": 0, "name": row["name"]})
    elif rows:
        effects.steps_created(run_id, spec.stage, now)
    for call in await tx.open_flow_calls(run_id):
        if call["status"] == RUNNING:
            await tx.update_flow_call(
                call["id"], scheduled_stages=call["scheduled_stages"] + 1
            )
    if not rows:
        await maybe_end_stage(tx, effects, run_id, spec.stage, now)
    effects.wake = True
    return {
        "stage": spec.stage,
        "scheduled": len(rows),
        "steps": [
            {"id": s.id, "name": s.name,
             "status": COMPLETED if s.id in kept else PENDING}
            for s in spec.steps
        ],
    }


async def allow_repost(tx, run_id, call_id) -> None:
    """
    Mark the stages flow call C{call_id} scheduled, so that its next
    delivery may post them again unchanged (see L{redelivered_stage}).
    """
    for stage in await tx.list_stages(run_id):
        if stage.get("flow_call_id") == call_id and not stage.get(
                "flow_call_interrupted"):
            await tx.update_stage(run_id, stage["name"], flow_call_interrupted=1)


async def redelivered_stage(tx, run_id, stage, spec) -> dict | None:
    """
    A redelivered flow callback posting again, unchanged, a stage its
    interrupted invocation had already scheduled: the answer that
    invocation got, with the steps' current statuses; None when this is
    not such a repeat.
    """
    calls = [c for c in await tx.open_flow_calls(run_id) if c["status"] == RUNNING]
    if not calls or calls[0]["id"] != stage.get("flow_call_id"):
        return None
    rows, total = await tx.list_steps(
        run_id, model.Page(len(spec.steps) + 1, sort_order="asc"), stage=spec.stage)
    if {(r["id"], r["name"]) for r in rows} != {(s.id, s.name) for s in spec.steps} \
            or total != len(spec.steps):
        return None
    status = {r["id"]: r["status"] for r in rows}
    return {
        "stage": spec.stage,
        "scheduled": len(spec.steps),
        "steps": [{"id": s.id, "name": s.name, "status": status[s.id]}
                  for s in spec.steps],
    }
