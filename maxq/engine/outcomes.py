"""
A step's result: success releases its dependents; a failure is retried with
backoff while retries are left, and otherwise cascades to what depends on it.
"""

from __future__ import annotations

from maxq import model, secrets
from maxq.engine.completion import maybe_end_stage
from maxq.engine.unit import log_event
from maxq.model import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING


def _failure_error(result) -> dict:
    if result.termination_reason == model.TIMEOUT:
        return {"reason": "timeout"}
    if result.signal is not None:
        return {"reason": "signal", "signal": result.signal}
    if result.termination_reason is not None:
        return {"reason": result.termination_reason}
    return {"reason": "exit_code", "exitCode": result.exit_code}


async def step_finished(ctx, tx, effects, run_id, step_id, claim_no, result):
    """
    A step's process ended (or could not start): record the attempt and
    apply retries, the failure cascade and the stage's end.
    """
    now = ctx.now()
    await tx.lock_run(run_id)
    step = await tx.get_step(run_id, step_id)
    if step is None or step["claim_no"] != claim_no:
        return
    # Values of the step's secret-looking env keys, and script tokens,
    # never reach the database.
    output = {"stdout": secrets.mask_output(result.stdout, step["env"]),
              "stderr": secrets.mask_output(result.stderr, step["env"])}
    if step["status"] != RUNNING:
        # Aborted, paused or failed with its run meanwhile: the decision
        # was made already; keep what the process printed.
        await tx.update_step(run_id, step_id, exit_code=result.exit_code, **output)
        return
    timing = {"completed_at": now, "duration_ms": now - (step["started_at"] or now),
              "exit_code": result.exit_code}
    attempt = {"attempt": step["retry_count"] + 1, "exitCode": result.exit_code}
    if result.succeeded:
        await tx.update_step(run_id, step_id, status=COMPLETED, error=None, **timing,
                             **output)
        effects.step_events(run_id, [step], COMPLETED, error=None, **attempt)
        await tx.release_dependents(run_id, step_id)
        effects.wake = True
    else:
        error = _failure_error(result)
        if step["retry_count"] < step["max_retries"]:
            retry_no = step["retry_count"] + 1
            delay = model.retry_delay_ms(step["retry_delay_ms"],
                                         step["retry_backoff"], retry_no)
            ready_at = now + int(delay)
            await tx.update_step(
                run_id, step_id, status=PENDING, retry_count=retry_no, error=error,
                termination_reason=result.termination_reason, ready_at=ready_at,
                queued_at=now, **timing, **output,
            )
            effects.step_events(run_id, [step], PENDING, error=error, **attempt,
                                retryCount=retry_no, readyAt=ready_at)
            await log_event(
                tx, run_id, "step", step_id, "warn",
                f"step {step_id} attempt {retry_no} failed; retrying in "
                f"{int(delay)} ms", "step_retrying", now, effects, error=error,
            )
            if delay > 0:
                effects.wake_at.append(ready_at)
            else:
                effects.wake = True
            return
        await tx.update_step(
            run_id, step_id, status=FAILED, error=error,
            termination_reason=result.termination_reason, **timing, **output,
        )
        effects.step_events(run_id, [step], FAILED, error=error, **attempt)
        await log_event(tx, run_id, "step", step_id, "error",
                        f"step {step_id} failed", "step_failed", now, effects,
                        error=error)
        await cascade(tx, run_id, step, now, effects)
    await maybe_end_stage(tx, effects, run_id, step["stage"], now)

async def cascade(tx, run_id, step, now, effects=None):
    """
    A step failed for good: everything that depends on it fails without
    running; with failFast, the rest of its stage's pending steps are
    cancelled.
    """
    failed_id = step["id"]
    seen: set[str] = set()
    frontier = [failed_id]
    while frontier:
        found = [d for d in await tx.dependents_of(run_id, frontier) if d not in seen]
        seen.update(found)
        frontier = found
    if seen:
        states = await tx.get_step_states(run_id, seen)
        victims = [sid for sid, (_stage, status) in states.items() if status == PENDING]
        error = {"reason": "dependency_failed", "failedStep": failed_id}
        await tx.update_steps(run_id, victims, status=FAILED, completed_at=now,
                              error=error)
        if effects is not None:
            effects.step_events(run_id, [{"id": sid, "stage": states[sid][0]}
                                         for sid in victims], FAILED, PENDING,
                                error=error)
    stage = await tx.get_stage(run_id, step["stage"])
    if stage["fail_fast"]:
        pending = await tx.steps_with_status(run_id, [PENDING], stage=step["stage"])
        error = {"reason": "cancelled", "failedStep": failed_id}
        await tx.update_steps(
            run_id, [r["id"] for r in pending], status=CANCELLED, completed_at=now,
            termination_reason="cancelled", error=error,
        )
        if effects is not None:
            effects.step_events(run_id, pending, CANCELLED, error=error)

