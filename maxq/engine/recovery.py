"""
Work the server itself cut short: attempts requeued after a graceful stop,
what a dead server left running (recover_interrupted), and the process
groups recorded so that a restart after a crash can find them.
"""

from __future__ import annotations

from maxq.engine.completion import maybe_end_stage
from maxq.engine.outcomes import cascade
from maxq.engine.stages import allow_repost
from maxq.engine.unit import log_event
from maxq.model import FAILED, PENDING, RUNNING

# The interruption (crash, lost worker) that fails a step for good.
MAX_INTERRUPTIONS = 3


async def requeue_step(ctx, tx, effects, run_id, step_id, claim_no):
    """
    The server stopped gracefully while the step ran: it goes back to
    pending without spending a retry, to run again on the next start.
    A graceful stop is not counted as an interruption.
    """
    await requeue_attempt(tx, effects, run_id, step_id, claim_no, ctx.now())


async def requeue_flow_call(ctx, tx, effects, call_id):
    """
    The server stopped while flow.sh ran: the callback is delivered again
    on the next start.
    """
    await redeliver_flow_call(tx, effects, call_id, ctx.now())


async def requeue_attempt(tx, effects, run_id, step_id, claim_no, now,
                           reason: str | None = None) -> str | None:
    """
    Put an attempt the server itself cut short back to pending, without
    spending a retry.  With a C{reason} (a crash: C{server_restart}, or
    C{worker_lost}) the interruption is counted, and the
    C{MAX_INTERRUPTIONS}th fails the step for good with
    C{{"reason": reason}}: a step that keeps taking its server down must
    not do so forever.  Returns the step's new status, or None when the
    attempt had already been decided.
    """
    await tx.lock_run(run_id)
    step = await tx.get_step(run_id, step_id)
    if step is None or step["claim_no"] != claim_no or step["status"] != RUNNING:
        return None
    interruptions = step["interruptions"] + (1 if reason else 0)
    effects.wake = True
    if reason is not None and interruptions >= MAX_INTERRUPTIONS:
        error = {"reason": reason}
        await tx.update_step(
            run_id, step_id, status=FAILED, error=error, termination_reason=reason,
            interruptions=interruptions, completed_at=now, pgid=None,
            duration_ms=now - (step["started_at"] or now),
        )
        effects.step_events(run_id, [step], FAILED, error=error,
                            attempt=step["retry_count"] + 1)
        await log_event(tx, run_id, "step", step_id, "error",
                        f"step {step_id} failed: interrupted {interruptions} times "
                        f"({reason})", "step_failed", now, effects, error=error)
        await cascade(tx, run_id, step, now, effects)
        await maybe_end_stage(tx, effects, run_id, step["stage"], now)
        return FAILED
    # ready_at is kept: the step was claimed already and takes its place
    # at the head of the queue again.
    await tx.update_step(
        run_id, step_id, status=PENDING, worker_id=None, started_at=None, pgid=None,
        queued_at=now, interruptions=interruptions,
    )
    effects.step_events(run_id, [step], PENDING, attempt=step["retry_count"] + 1,
                        interruptions=interruptions, reason=reason or "requeued")
    if reason is not None:
        await log_event(tx, run_id, "step", step_id, "warn",
                        f"step {step_id} interrupted ({reason}); back to pending",
                        "step_interrupted", now, effects, interruptions=interruptions)
    return PENDING


async def redeliver_flow_call(tx, effects, call_id, now,
                                reason: str | None = None) -> bool:
    """
    Deliver an interrupted flow callback again.  The stages its cut-short
    invocation already scheduled are marked, so that the next invocation
    may post them again (see L{maxq.engine.stages.redelivered_stage}).
    """
    call = await tx.get_flow_call(call_id)
    if call is None:
        return False
    await tx.lock_run(call["run_id"])
    call = await tx.get_flow_call(call_id)
    if call["status"] != RUNNING:
        return False
    run_id = call["run_id"]
    # scheduled_stages is kept: what the invocation scheduled stands.
    await tx.update_flow_call(call_id, status=PENDING, worker_id=None,
                              started_at=None, pgid=None)
    await allow_repost(tx, run_id, call_id)
    if reason is not None:
        run = await tx.get_run(run_id)
        await log_event(tx, run_id, "flow", run["flow_name"], "warn",
                        f"flow call interrupted ({reason}); delivered again",
                        "flow_interrupted", now, effects, callId=call_id)
    effects.wake = True
    return True


async def record_pgids(ctx, steps: list[tuple[str, str, int, int]],
                       calls: list[tuple[int, int]]) -> None:
    """
    Remember the process group of each started step C{(run_id, step_id,
    claim_no, pgid)} and flow call C{(call_id, pgid)}, in one transaction,
    so that a restart after a crash can find what is left of them.
    """
    async def record(tx):
        # Only for the attempt that started the process, if it is still
        # running: one conditional statement each, no read first.
        for run_id, step_id, claim_no, pgid in steps:
            await tx.record_step_pgid(run_id, step_id, claim_no, pgid)
        for call_id, pgid in calls:
            await tx.record_flow_call_pgid(call_id, pgid)

    if steps or calls:
        await ctx.store.transaction(record)


async def recover_interrupted(ctx, transact, leftovers, worker_ids: list[str] | None,
                              reason: str) -> dict:
    """
    Put back the work that was running under C{worker_ids} (None: every
    worker) when its server died: make sure none of its processes is
    still alive (through C{leftovers}, when not None), then return each
    interrupted step to pending without spending a retry (the
    C{MAX_INTERRUPTIONS}th interruption fails it with C{{"reason":
    reason}}) and queue each interrupted flow callback again.  Completed
    steps and posted fields are untouched.  Returns counts.
    C{transact(unit)} runs C{unit(tx, effects)} and applies its effects.
    """
    async def find(tx):
        return (await tx.running_steps(worker_ids),
                await tx.running_flow_calls(worker_ids))

    steps, calls = await ctx.store.read(find)
    outcome = {"steps": 0, "failed": 0, "flowCalls": 0, "processGroups": 0}
    if not steps and not calls:
        return outcome
    if leftovers is not None:
        outcome["processGroups"] = await leftovers.terminate(
            [(s["run_id"], s["id"], s["pgid"]) for s in steps]
            + [(c["run_id"], None, c["pgid"]) for c in calls]
        )
    # Steps that fail for good first: a step of the same stage that is
    # only requeued then runs again instead of being cancelled, as it
    # would have finished had the server not died.
    steps.sort(key=lambda s: s["interruptions"] + 1 < MAX_INTERRUPTIONS)

    async def recover(tx, effects):
        # A backend may run the unit again: count from zero each time.
        outcome.update(steps=0, failed=0, flowCalls=0)
        now = ctx.now()
        for call in calls:
            if await redeliver_flow_call(tx, effects, call["id"], now, reason):
                outcome["flowCalls"] += 1
        for s in steps:
            status = await requeue_attempt(tx, effects, s["run_id"], s["id"],
                                           s["claim_no"], now, reason)
            if status == PENDING:
                outcome["steps"] += 1
            elif status == FAILED:
                outcome["failed"] += 1

    await transact(recover)
    return outcome

