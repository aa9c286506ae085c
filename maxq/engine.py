"""
The rules of MaxQ (SPEC §2), in one place that the API and the scheduler
both call.

Each operation is one store transaction that reads what it needs, decides,
and writes every row it changes, so a state change is all or nothing.  What
a transaction cannot do itself (terminate processes, wake the scheduler) it
records in an L{Effects} that is applied once the transaction committed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.logger import Logger

from maxq import model, secrets
from maxq.errors import ApiError, flow_not_found, run_not_found, step_not_found_in_run
from maxq.errors import validation_error
from maxq.flows import FlowsRoot
from maxq.model import (
    ABORTED, CANCELLED, COMPLETED, FAILED, PAUSED, PENDING, RUNNING,
)

MAX_IDEMPOTENCY_KEY = 255
# The interruption (crash, lost worker) that fails a step for good.
MAX_INTERRUPTIONS = 3
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


class _NoProcesses:
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


def _failure_error(result) -> dict:
    if result.termination_reason == model.TIMEOUT:
        return {"reason": "timeout"}
    if result.signal is not None:
        return {"reason": "signal", "signal": result.signal}
    if result.termination_reason is not None:
        return {"reason": result.termination_reason}
    return {"reason": "exit_code", "exitCode": result.exit_code}


def _append_tail(old: str, new: str, limit: int) -> str:
    if not new:
        return old
    text = old + new
    return text[-limit:] if len(text) > limit else text


class Engine:
    log = Logger()

    def __init__(self, store, flows: FlowsRoot, config, clock):
        self.store = store
        self.flows = flows
        self.config = config
        self.clock = clock
        self.control: ProcessControl = _NoProcesses()
        # Terminates what a dead server left running (recover_interrupted):
        # C{async terminate([(run_id, step_id or None, pgid or None)]) -> int}.
        self.leftovers = None
        # Whether other servers may share the database and must be told.
        self.broadcast = store.peers.shared

    def now(self) -> int:
        return int(self.clock.seconds() * 1000)

    async def _transact(self, fn, *args):
        """
        Run C{fn(tx, effects, *args)} in a transaction, then apply its effects.
        """
        result, _killed = await self._transact_counting(fn, *args)
        return result

    async def _transact_counting(self, fn, *args):
        """
        L{_transact}, also returning how many processes were terminated.
        """
        effects = Effects()

        async def unit(tx):
            # A backend may run the unit again (a lost deadlock race): start
            # each attempt with nothing decided.
            effects.__init__()
            result = await fn(tx, effects, *args)
            if self.broadcast and (effects.wake or effects.wake_at or effects.kill_steps
                                   or effects.kill_flows):
                await tx.notify(self._announcement(effects))
            return result

        result = await self.store.transaction(unit)
        return result, self._apply(effects)

    def _announcement(self, effects: Effects) -> str:
        """
        What the other servers sharing the database must hear: wake up, when
        a retry is due, which processes to terminate.
        """
        message = {"from": self.config.worker_id, "wake": True}
        if effects.wake_at:
            message["at"] = effects.wake_at
        if effects.kill_steps or effects.kill_flows:
            message.update(kill=effects.kill_steps, flows=effects.kill_flows,
                           reason=effects.kill_reason)
        text = json.dumps(message, separators=(",", ":"))
        if len(text) > NOTIFY_LIMIT:
            # Too many to name: the other servers find them by polling.
            text = json.dumps({"from": self.config.worker_id, "wake": True,
                               "recheck": True})
        return text

    def _apply(self, effects: Effects) -> int:
        killed = 0
        if effects.kill_steps:
            killed += self.control.terminate_steps(effects.kill_steps, effects.kill_reason)
        for run_id in effects.kill_flows:
            killed += self.control.terminate_flow(run_id, effects.kill_reason)
        for when in effects.wake_at:
            self.control.wake_at(when)
        if effects.wake:
            self.control.wake()
        return killed

    # ------------------------------------------------------------------ logs

    async def _log(self, tx, run_id, entity_type, entity_id, level, message, event,
                   now, **extra):
        await tx.insert_log(
            {
                "run_id": run_id,
                "entity_type": entity_type,
                "entity_id": entity_id,
                "level": level,
                "message": message,
                "metadata": {"event": event, "source": "server", **extra},
                "created_at": now,
            }
        )

    # ------------------------------------------------------------------ runs

    async def create_run(self, flow_name: str, body: Any,
                         idempotency_key: str | None) -> tuple[dict, bool]:
        """
        Trigger C{flow_name}.  Returns C{(run, created)}: C{created} is
        False when C{idempotency_key} names a run that already exists.
        """
        if self.flows.flow_script(flow_name) is None:
            raise flow_not_found(flow_name)
        if not isinstance(body, dict):
            raise validation_error("body must be a JSON object")
        unknown = set(body) - {"input", "metadata", "flowName", "name", "description"}
        if unknown:
            raise validation_error("unknown keys in body", keys=sorted(unknown))
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise validation_error("metadata must be an object", field="metadata")
        for key in ("name", "description"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise validation_error(f"{key} must be a string", field=key)
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise validation_error(
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
            )
        return await self._transact(self._create_run_tx, flow_name, body, idempotency_key)

    async def _create_run_tx(self, tx, effects, flow_name, body, key):
        if key is not None:
            existing = await tx.get_run_by_idempotency_key(key)
            if existing is not None:
                if existing["flow_name"] != flow_name:
                    raise ApiError(
                        409,
                        "IDEMPOTENCY_CONFLICT",
                        "this Idempotency-Key was used for a run of another flow",
                        runId=existing["id"],
                        flowName=existing["flow_name"],
                    )
                return await self._run_view(tx, existing), False
        now = self.now()
        run = {
            "id": str(uuid.uuid4()),
            "flow_name": flow_name,
            "status": PENDING,
            "name": body.get("name"),
            "description": body.get("description"),
            "input": body.get("input"),
            "metadata": body.get("metadata"),
            "idempotency_key": key,
            "created_at": now,
        }
        await tx.insert_run(run)
        await tx.insert_flow_call(run["id"], None, None, now)
        effects.wake = True
        return await self._run_view(tx, await tx.get_run(run["id"])), True

    async def _run_view(self, tx, run: dict) -> dict:
        run = dict(run)
        run["stages"] = await tx.list_stages(run["id"])
        return run

    async def get_run(self, run_id: str) -> dict:
        async def read(tx):
            run = await tx.get_run(run_id)
            if run is None:
                raise run_not_found(run_id)
            return await self._run_view(tx, run)

        return await self.store.read(read)

    async def run_finished(self, run_id: str) -> bool:
        """
        True when the run is completed or failed (or does not exist).
        """
        run = await self.store.read(lambda tx: tx.get_run(run_id))
        return run is None or run["status"] in model.RUN_FINISHED

    async def list_runs(self, flow_name, status, sort_by, sort_order, limit, offset):
        async def read(tx):
            return await tx.list_runs(flow_name, status, sort_by, sort_order, limit, offset)

        return await self.store.read(read)

    async def patch_run(self, run_id: str, body: Any) -> dict:
        if not isinstance(body, dict):
            raise validation_error("body must be a JSON object")
        unknown = set(body) - {"name", "description", "output", "metadata"}
        if unknown:
            raise validation_error(
                "only name, description, output and metadata may be changed",
                keys=sorted(unknown),
            )
        for key in ("name", "description"):
            if key in body and body[key] is not None and not isinstance(body[key], str):
                raise validation_error(f"{key} must be a string", field=key)
        if "metadata" in body and body["metadata"] is not None and not isinstance(
            body["metadata"], dict
        ):
            raise validation_error("metadata must be an object", field="metadata")

        async def patch(tx, effects):
            await tx.lock_run(run_id)
            run = await tx.get_run(run_id)
            if run is None:
                raise run_not_found(run_id)
            await tx.update_run(run_id, **body)
            return await self._run_view(tx, await tx.get_run(run_id))

        return await self._transact(patch)

    # ---------------------------------------------------------------- stages

    async def schedule_stage(self, run_id: str, body: Any) -> dict:
        """
        C{POST /runs/{id}/steps}: validate everything, then insert the stage
        and its steps in one transaction.
        """
        spec = model.parse_stage_request(body, self.config.max_steps_per_stage,
                                         self.config.max_dependencies_per_stage)
        seen: set[str] = set()
        for step in spec.steps:
            if step.id in seen:
                raise ApiError(
                    400, "DUPLICATE_STEP_ID", f"step id {step.id!r} appears twice",
                    stepId=step.id,
                )
            seen.add(step.id)
        run = await self.store.read(lambda tx: tx.get_run(run_id))
        if run is None:
            raise run_not_found(run_id)
        checked: set[str] = set()
        for step in spec.steps:
            if step.name in checked:
                continue
            if self.flows.step_script(run["flow_name"], step.name) is None:
                raise ApiError(
                    400,
                    "STEP_NOT_FOUND",
                    f"flow {run['flow_name']!r} has no executable step script "
                    f"steps/{step.name}/step.sh",
                    stepId=step.id,
                    name=step.name,
                )
            checked.add(step.name)
        return await self._transact(self._schedule_stage_tx, run_id, spec)

    async def _schedule_stage_tx(self, tx, effects, run_id, spec):
        await tx.lock_run(run_id)
        run = await tx.get_run(run_id)
        if run is None:
            raise run_not_found(run_id)
        if run["status"] in model.RUN_FINISHED:
            raise ApiError(
                409, "RUN_NOT_ACTIVE", f"run {run_id} is {run['status']}",
                runId=run_id, status=run["status"],
            )
        stage = await tx.get_stage(run_id, spec.stage)
        if stage is not None and stage.get("flow_call_interrupted"):
            repeat = await self._redelivered_stage(tx, run_id, stage, spec)
            if repeat is not None:
                return repeat
        if stage is not None and stage["status"] in (PENDING, RUNNING):
            raise ApiError(
                409, "STAGE_EXISTS",
                f"stage {spec.stage!r} is already scheduled and unfinished",
                stage=spec.stage,
            )
        ids = [s.id for s in spec.steps]
        existing = await tx.get_step_states(run_id, ids)
        for step_id, (stage_name, _status) in existing.items():
            if stage is None or stage_name != spec.stage:
                raise ApiError(
                    400, "DUPLICATE_STEP_ID",
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

        now = self.now()
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
        else:
            await tx.insert_stage(
                {
                    "run_id": run_id, "name": spec.stage, "status": RUNNING,
                    "final": int(spec.final), "fail_fast": int(spec.fail_fast),
                    "created_at": now, "flow_call_id": calling[0],
                }
            )
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
                }
            )
            edges.extend((step.id, d) for d in step.depends_on)
        await tx.insert_steps(run_id, rows, edges)
        for call in await tx.open_flow_calls(run_id):
            if call["status"] == RUNNING:
                await tx.update_flow_call(
                    call["id"], scheduled_stages=call["scheduled_stages"] + 1
                )
        if not rows:
            await self._maybe_end_stage(tx, effects, run_id, spec.stage, now)
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

    async def _maybe_end_stage(self, tx, effects, run_id, stage_name, now):
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
        await self._log(
            tx, run_id, "stage", stage_name, "info" if ok else "error",
            f"stage {stage_name} {status}", f"stage_{status}", now, counts=counts,
        )
        run = await tx.get_run(run_id)
        if run["status"] not in model.RUN_ACTIVE:
            return
        if ok and stage["final"]:
            await self._complete_run(tx, effects, run, now)
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

    # ----------------------------------------------------------- run endings

    async def _complete_run(self, tx, effects, run, now):
        await self._stop_everything(
            tx, effects, run["id"], now, reason=CANCELLED,
            pending_status=CANCELLED, running_status=CANCELLED,
        )
        await tx.update_run(
            run["id"], status=COMPLETED, completed_at=now, error=None,
            termination_reason=None,
        )
        await self._log(tx, run["id"], "run", run["id"], "info", "run completed",
                        "run_completed", now)

    async def _fail_run(self, tx, effects, run, now, error, termination_reason=None,
                        step_reason=model.FLOW_FAILED, pending_status=CANCELLED):
        await self._stop_everything(
            tx, effects, run["id"], now, reason=step_reason,
            pending_status=pending_status, running_status=FAILED,
        )
        await tx.update_run(
            run["id"], status=FAILED, completed_at=now, error=error,
            termination_reason=termination_reason,
        )
        await self._log(tx, run["id"], "run", run["id"], "error",
                        f"run failed: {error.get('reason')}", "run_failed", now,
                        error=error)

    async def _stop_everything(self, tx, effects, run_id, now, reason,
                               pending_status, running_status):
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
        if running:
            await tx.update_steps(
                run_id, [r["id"] for r in running], status=running_status,
                termination_reason=reason, error=error, completed_at=now,
            )
            effects.kill_steps.extend((run_id, r["id"], r["claim_no"]) for r in running)
            effects.kill_reason = reason
        for stage in await tx.list_stages(run_id):
            if stage["status"] in (PENDING, RUNNING):
                await tx.update_stage(run_id, stage["name"], status=FAILED,
                                      completed_at=now)
        for call in await tx.open_flow_calls(run_id):
            if call["status"] == RUNNING:
                effects.kill_flows.append(run_id)
                effects.kill_reason = reason
            await tx.update_flow_call(call["id"], status=CANCELLED, completed_at=now)

    # ------------------------------------------------------------- scheduler

    async def claim(self, worker_id: str, call_limit: int,
                    step_limit: int) -> tuple[list[dict], list[dict]]:
        """
        Claim up to C{call_limit} due flow calls and up to C{step_limit}
        runnable steps for C{worker_id}, in one transaction.
        """
        return await self._transact(self._claim_tx, worker_id, call_limit, step_limit)

    async def _claim_tx(self, tx, effects, worker_id, call_limit, step_limit):
        now = self.now()
        calls = await tx.claim_flow_calls(worker_id, now, call_limit)
        for call in calls:
            run = await tx.get_run(call["run_id"])
            if run["status"] == PENDING:
                await tx.update_run(run["id"], status=RUNNING, started_at=now)
                await self._log(tx, run["id"], "run", run["id"], "info",
                                f"run of {run['flow_name']} started", "run_started", now)
        steps = await tx.claim_steps(worker_id, now, step_limit) if step_limit > 0 else []
        return calls, steps

    async def step_finished(self, run_id: str, step_id: str, claim_no: int, result):
        """
        A step's process ended (or could not start): record the attempt and
        apply retries, the failure cascade and the stage's end.
        """
        await self._transact(self._step_finished_tx, run_id, step_id, claim_no, result)

    async def _step_finished_tx(self, tx, effects, run_id, step_id, claim_no, result):
        now = self.now()
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
        if result.succeeded:
            await tx.update_step(run_id, step_id, status=COMPLETED, error=None, **timing,
                                 **output)
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
                await self._log(
                    tx, run_id, "step", step_id, "warn",
                    f"step {step_id} attempt {retry_no} failed; retrying in "
                    f"{int(delay)} ms", "step_retrying", now, error=error,
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
            await self._log(tx, run_id, "step", step_id, "error",
                            f"step {step_id} failed", "step_failed", now, error=error)
            await self._cascade(tx, run_id, step, now)
        await self._maybe_end_stage(tx, effects, run_id, step["stage"], now)

    async def _cascade(self, tx, run_id, step, now):
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
            await tx.update_steps(
                run_id, victims, status=FAILED, completed_at=now,
                error={"reason": "dependency_failed", "failedStep": failed_id},
            )
        stage = await tx.get_stage(run_id, step["stage"])
        if stage["fail_fast"]:
            pending = await tx.steps_with_status(run_id, [PENDING], stage=step["stage"])
            await tx.update_steps(
                run_id, [r["id"] for r in pending], status=CANCELLED, completed_at=now,
                termination_reason="cancelled",
                error={"reason": "cancelled", "failedStep": failed_id},
            )

    async def requeue_step(self, run_id: str, step_id: str, claim_no: int):
        """
        The server stopped gracefully while the step ran: it goes back to
        pending without spending a retry, to run again on the next start.
        A graceful stop is not counted as an interruption.
        """
        async def requeue(tx, effects):
            await self._requeue_step_tx(tx, effects, run_id, step_id, claim_no,
                                        self.now())

        await self._transact(requeue)

    async def requeue_flow_call(self, call_id: int):
        """
        The server stopped while flow.sh ran: the callback is delivered again
        on the next start.
        """
        async def requeue(tx, effects):
            await self._requeue_flow_call_tx(tx, effects, call_id, self.now())

        await self._transact(requeue)

    async def _requeue_step_tx(self, tx, effects, run_id, step_id, claim_no, now,
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
            await self._log(tx, run_id, "step", step_id, "error",
                            f"step {step_id} failed: interrupted {interruptions} times "
                            f"({reason})", "step_failed", now, error=error)
            await self._cascade(tx, run_id, step, now)
            await self._maybe_end_stage(tx, effects, run_id, step["stage"], now)
            return FAILED
        # ready_at is kept: the step was claimed already and takes its place
        # at the head of the queue again.
        await tx.update_step(
            run_id, step_id, status=PENDING, worker_id=None, started_at=None, pgid=None,
            queued_at=now, interruptions=interruptions,
        )
        if reason is not None:
            await self._log(tx, run_id, "step", step_id, "warn",
                            f"step {step_id} interrupted ({reason}); back to pending",
                            "step_interrupted", now, interruptions=interruptions)
        return PENDING

    async def _requeue_flow_call_tx(self, tx, effects, call_id, now,
                                    reason: str | None = None) -> bool:
        """
        Deliver an interrupted flow callback again.  The stages its cut-short
        invocation already scheduled are marked, so that the next invocation
        may post them again (see L{_redelivered_stage}).
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
        await self._allow_repost(tx, run_id, call_id)
        if reason is not None:
            run = await tx.get_run(run_id)
            await self._log(tx, run_id, "flow", run["flow_name"], "warn",
                            f"flow call interrupted ({reason}); delivered again",
                            "flow_interrupted", now, callId=call_id)
        effects.wake = True
        return True

    async def _allow_repost(self, tx, run_id, call_id) -> None:
        """
        Mark the stages flow call C{call_id} scheduled, so that its next
        delivery may post them again unchanged (see L{_redelivered_stage}).
        """
        for stage in await tx.list_stages(run_id):
            if stage.get("flow_call_id") == call_id and not stage.get(
                    "flow_call_interrupted"):
                await tx.update_stage(run_id, stage["name"], flow_call_interrupted=1)

    async def _redelivered_stage(self, tx, run_id, stage, spec) -> dict | None:
        """
        A redelivered flow callback posting again, unchanged, a stage its
        interrupted invocation had already scheduled: the answer that
        invocation got, with the steps' current statuses; None when this is
        not such a repeat.
        """
        calls = [c for c in await tx.open_flow_calls(run_id) if c["status"] == RUNNING]
        if not calls or calls[0]["id"] != stage.get("flow_call_id"):
            return None
        rows, total = await tx.list_steps(run_id, spec.stage, None, None, "createdAt",
                                          "asc", len(spec.steps) + 1, 0)
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

    async def record_pgids(self, steps: list[tuple[str, str, int, int]],
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
            await self.store.transaction(record)

    async def recover_interrupted(self, worker_ids: list[str] | None,
                                  reason: str) -> dict:
        """
        Put back the work that was running under C{worker_ids} (None: every
        worker) when its server died: make sure none of its processes is
        still alive (through C{self.leftovers}, when set), then return each
        interrupted step to pending without spending a retry (the
        C{MAX_INTERRUPTIONS}th interruption fails it with C{{"reason":
        reason}}) and queue each interrupted flow callback again.  Completed
        steps and posted fields are untouched.  Returns counts.
        """
        async def find(tx):
            return (await tx.running_steps(worker_ids),
                    await tx.running_flow_calls(worker_ids))

        steps, calls = await self.store.read(find)
        outcome = {"steps": 0, "failed": 0, "flowCalls": 0, "processGroups": 0}
        if not steps and not calls:
            return outcome
        if self.leftovers is not None:
            outcome["processGroups"] = await self.leftovers.terminate(
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
            now = self.now()
            for call in calls:
                if await self._requeue_flow_call_tx(tx, effects, call["id"], now, reason):
                    outcome["flowCalls"] += 1
            for s in steps:
                status = await self._requeue_step_tx(tx, effects, s["run_id"], s["id"],
                                                     s["claim_no"], now, reason)
                if status == PENDING:
                    outcome["steps"] += 1
                elif status == FAILED:
                    outcome["failed"] += 1

        await self._transact(recover)
        return outcome

    async def flow_call_finished(self, call_id: int, result):
        await self._transact(self._flow_call_finished_tx, call_id, result)

    async def _flow_call_finished_tx(self, tx, effects, call_id, result):
        now = self.now()
        call = await tx.get_flow_call(call_id)
        if call is None:
            return
        await tx.lock_run(call["run_id"])
        call = await tx.get_flow_call(call_id)
        run = await tx.get_run(call["run_id"])
        limit = self.config.max_log_capture
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
            await self._fail_run(tx, effects, run, now, error)
            return
        if call["failed_stage"] and call["scheduled_stages"] == 0:
            await self._fail_run(
                tx, effects, run, now,
                {"reason": "stage_failed", "stage": call["failed_stage"]},
            )
            return
        if (await tx.count_unfinished_stages(run["id"]) == 0
                and not await tx.open_flow_calls(run["id"])):
            await self._complete_run(tx, effects, run, now)

    # ----------------------------------------------------------- run control

    async def abort(self, run_id: str) -> dict:
        outcome, killed = await self._transact_counting(self._abort_tx, run_id)
        if outcome["alreadyCompleted"]:
            message = f"run {run_id} had already finished"
        else:
            message = f"run {run_id} aborted"
        return {"message": message, "processesKilled": killed, **outcome}

    async def _abort_tx(self, tx, effects, run_id):
        await tx.lock_run(run_id)
        run = await tx.get_run(run_id)
        if run is None:
            raise run_not_found(run_id)
        if run["status"] in model.RUN_FINISHED:
            return {"alreadyCompleted": True}
        now = self.now()
        await self._fail_run(
            tx, effects, run, now, {"reason": ABORTED}, termination_reason=ABORTED,
            step_reason=ABORTED, pending_status=FAILED,
        )
        await self._log(tx, run_id, "run", run_id, "warn", "run aborted", "run_aborted", now)
        return {"alreadyCompleted": False}

    async def retry_run(self, run_id: str) -> dict:
        return await self._transact(self._retry_run_tx, run_id)

    async def _retry_run_tx(self, tx, effects, run_id):
        await tx.lock_run(run_id)
        run = await tx.get_run(run_id)
        if run is None:
            raise run_not_found(run_id)
        if run["status"] == COMPLETED:
            raise ApiError(400, "RUN_COMPLETED", f"run {run_id} completed; nothing to retry",
                           runId=run_id)
        if run["status"] != FAILED:
            raise ApiError(409, "RUN_ACTIVE", f"run {run_id} is {run['status']}",
                           runId=run_id, status=run["status"])
        now = self.now()
        failed = await tx.steps_with_status(run_id, [FAILED, CANCELLED])
        await self._reset_steps(tx, run_id, [r["id"] for r in failed], now)
        for stage in await tx.list_stages(run_id):
            if stage["status"] == FAILED:
                counts = await tx.count_stage_steps(run_id, stage["name"])
                if counts.get(PENDING):
                    await tx.update_stage(run_id, stage["name"], status=RUNNING,
                                          completed_at=None)
        redo = await tx.flow_calls_with_status(run_id, [FAILED, CANCELLED])
        for call in redo:
            # Delivered again, the call will likely post again what it
            # scheduled before it failed: that reuses the stage's records
            # (SPEC §3), even while the retry has the stage running again.
            await tx.update_flow_call(call["id"], status=PENDING, exit_code=None,
                                      worker_id=None, started_at=None, completed_at=None)
            await self._allow_repost(tx, run_id, call["id"])
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
        await self._log(tx, run_id, "run", run_id, "info",
                        f"run retried: {len(failed)} steps reset", "run_retried", now)
        effects.wake = True
        return {"run": await self._run_view(tx, await tx.get_run(run_id)),
                "message": f"run {run_id} retried; {len(failed)} steps reset to pending"}

    async def _reset_steps(self, tx, run_id, step_ids, now):
        if not step_ids:
            return
        await tx.update_steps(
            run_id, step_ids, status=PENDING, retry_count=0, error=None, exit_code=None,
            termination_reason=None, completed_at=None, duration_ms=None,
            started_at=None, worker_id=None, queued_at=now, ready_at=now,
        )
        await tx.recount_dependencies(run_id)

    async def pause(self, run_id: str) -> dict:
        return await self._transact(self._pause_tx, run_id)

    async def _pause_tx(self, tx, effects, run_id):
        await tx.lock_run(run_id)
        run = await tx.get_run(run_id)
        if run is None:
            raise run_not_found(run_id)
        if run["status"] not in (PENDING, RUNNING):
            raise ApiError(409, "RUN_NOT_RUNNING", f"run {run_id} is {run['status']}",
                           runId=run_id, status=run["status"])
        now = self.now()
        running = await tx.steps_with_status(run_id, [RUNNING])
        if running:
            # Back to pending without spending a retry.
            await tx.update_steps(
                run_id, [r["id"] for r in running], status=PENDING, worker_id=None,
                started_at=None, queued_at=now, ready_at=now,
            )
            effects.kill_steps.extend((run_id, r["id"], r["claim_no"]) for r in running)
            effects.kill_reason = model.PAUSED_BY_USER
        await tx.update_run(run_id, status=PAUSED)
        await self._log(tx, run_id, "run", run_id, "info",
                        f"run paused; {len(running)} running steps stopped", "run_paused",
                        now)
        return {"run": await self._run_view(tx, await tx.get_run(run_id)),
                "message": f"run {run_id} paused"}

    async def resume(self, run_id: str) -> dict:
        return await self._transact(self._resume_tx, run_id)

    async def _resume_tx(self, tx, effects, run_id):
        await tx.lock_run(run_id)
        run = await tx.get_run(run_id)
        if run is None:
            raise run_not_found(run_id)
        if run["status"] != PAUSED:
            raise ApiError(409, "RUN_NOT_PAUSED", f"run {run_id} is {run['status']}",
                           runId=run_id, status=run["status"])
        now = self.now()
        await tx.update_run(run_id, status=RUNNING if run["started_at"] else PENDING)
        await self._log(tx, run_id, "run", run_id, "info", "run resumed", "run_resumed", now)
        effects.wake = True
        return {"run": await self._run_view(tx, await tx.get_run(run_id)),
                "message": f"run {run_id} resumed"}

    async def retry_step(self, run_id: str, step_id: str) -> dict:
        return await self._transact(self._retry_step_tx, run_id, step_id)

    async def _retry_step_tx(self, tx, effects, run_id, step_id):
        await tx.lock_run(run_id)
        run = await tx.get_run(run_id)
        if run is None:
            raise run_not_found(run_id)
        step = await tx.get_step(run_id, step_id)
        if step is None:
            raise step_not_found_in_run(run_id, step_id)
        if run["status"] == COMPLETED:
            raise ApiError(400, "RUN_COMPLETED", f"run {run_id} completed", runId=run_id)
        if run["status"] not in (FAILED, PAUSED):
            raise ApiError(409, "RUN_ACTIVE",
                           f"run {run_id} is {run['status']}; only a failed or paused "
                           "run's steps can be retried", runId=run_id,
                           status=run["status"])
        if step["status"] not in (FAILED, CANCELLED):
            raise ApiError(409, "STEP_NOT_FAILED", f"step {step_id} is {step['status']}",
                           stepId=step_id, status=step["status"])
        now = self.now()
        # The step, and every step that failed or was cancelled because of it.
        others = await tx.steps_with_status(run_id, [FAILED, CANCELLED])
        reset = [step_id] + [
            r["id"] for r in others
            if r["id"] != step_id and (r["error"] or {}).get("failedStep") == step_id
        ]
        await self._reset_steps(tx, run_id, reset, now)
        stages = {step["stage"]} | {
            r["stage"] for r in others if r["id"] in set(reset)
        }
        for name in stages:
            await tx.update_stage(run_id, name, status=RUNNING, completed_at=None)
        if run["status"] == FAILED:
            for call in await tx.flow_calls_with_status(run_id, [CANCELLED]):
                await tx.update_flow_call(call["id"], status=PENDING, worker_id=None,
                                          started_at=None, completed_at=None)
            await tx.update_run(run_id, status=RUNNING, error=None,
                                termination_reason=None, completed_at=None)
        await self._log(tx, run_id, "step", step_id, "info",
                        f"step {step_id} retried with {len(reset) - 1} dependents",
                        "step_retried", now, steps=reset)
        effects.wake = True
        return {"run": await self._run_view(tx, await tx.get_run(run_id)),
                "steps": reset, "message": f"step {step_id} retried"}

    # ------------------------------------------------------ steps and fields

    async def list_steps(self, run_id, stage, status, name, sort_by, sort_order, limit,
                         offset):
        async def read(tx):
            if await tx.get_run(run_id) is None:
                raise run_not_found(run_id)
            return await tx.list_steps(run_id, stage, status, name, sort_by, sort_order,
                                       limit, offset)

        return await self.store.read(read)

    async def get_step(self, run_id: str, step_id: str) -> dict:
        async def read(tx):
            if await tx.get_run(run_id) is None:
                raise run_not_found(run_id)
            step = await tx.get_step(run_id, step_id)
            if step is None:
                raise step_not_found_in_run(run_id, step_id)
            return step

        return await self.store.read(read)

    async def post_fields(self, run_id: str, step_id: str, body: Any) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("fields"), dict):
            raise validation_error('body must be {"fields": {...}} with an object')
        if set(body) - {"fields"}:
            raise validation_error("unknown keys in body", keys=sorted(set(body) - {"fields"}))

        async def post(tx, effects):
            await tx.lock_run(run_id)
            if await tx.get_run(run_id) is None:
                raise run_not_found(run_id)
            step = await tx.get_step(run_id, step_id)
            if step is None:
                raise step_not_found_in_run(run_id, step_id)
            fields = {**(step["fields"] or {}), **body["fields"]}
            model.check_fields_size(fields, step_id)
            await tx.update_step(run_id, step_id, fields=fields)
            return {"id": step_id, "runId": run_id, "fields": fields}

        return await self._transact(post)

    async def get_fields(self, run_id: str, step_ids: list[str] | None,
                         field_name: str | None) -> list[dict]:
        async def read(tx):
            if await tx.get_run(run_id) is None:
                raise run_not_found(run_id)
            return await tx.get_fields(run_id, step_ids)

        rows = await self.store.read(read)
        out = []
        for row in rows:
            fields = row["fields"] or {}
            if field_name is not None:
                fields = {field_name: fields[field_name]} if field_name in fields else {}
            out.append({
                "stepId": row["id"], "stepName": row["name"], "stageName": row["stage"],
                "status": row["status"], "fields": fields,
                "completedAt": row["completed_at"],
            })
        return out

    # ------------------------------------------------------------------ logs

    async def add_log(self, run_id: str, body: Any) -> dict:
        if not isinstance(body, dict):
            raise validation_error("body must be a JSON object")
        unknown = set(body) - {"entityType", "entityId", "level", "message", "metadata"}
        if unknown:
            raise validation_error("unknown keys in body", keys=sorted(unknown))
        if body.get("entityType") not in model.LOG_ENTITY_TYPES:
            raise validation_error("entityType must be one of "
                                   + ", ".join(model.LOG_ENTITY_TYPES), field="entityType")
        if body.get("level") not in model.LOG_LEVELS:
            raise validation_error("level must be one of " + ", ".join(model.LOG_LEVELS),
                                   field="level")
        if not isinstance(body.get("message"), str):
            raise validation_error("message is required (a string)", field="message")
        entity_id = body.get("entityId")
        if entity_id is not None and not isinstance(entity_id, str):
            raise validation_error("entityId must be a string", field="entityId")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise validation_error("metadata must be an object", field="metadata")

        async def add(tx, effects):
            if await tx.get_run(run_id) is None:
                raise run_not_found(run_id)
            row = {
                "run_id": run_id, "entity_type": body["entityType"],
                "entity_id": entity_id, "level": body["level"],
                "message": body["message"], "metadata": metadata,
                "created_at": self.now(),
            }
            row["id"] = await tx.insert_log(row)
            return row

        return await self._transact(add)

    async def list_logs(self, run_id, entity_type, entity_id, level, limit, offset):
        async def read(tx):
            if await tx.get_run(run_id) is None:
                raise run_not_found(run_id)
            return await tx.list_logs(run_id, entity_type, entity_id, level, limit, offset)

        return await self.store.read(read)

    # -------------------------------------------------------------- cluster

    async def heartbeat(self, worker_id: str, timeout_ms: int) -> list[str]:
        """
        Record that this server is alive; fires with the servers found lost.
        """
        return await self.store.transaction(
            lambda tx: tx.heartbeat(worker_id, timeout_ms))

    async def leave_cluster(self, worker_id: str) -> None:
        await self.store.transaction(lambda tx: tx.remove_worker(worker_id))

    async def running_on(self, worker_id: str) -> tuple[list[dict], list[dict]]:
        """
        The steps and flow calls the database says run on C{worker_id}.
        """
        async def read(tx):
            return (await tx.running_steps([worker_id]),
                    await tx.running_flow_calls([worker_id]))

        return await self.store.read(read)
