"""
The rules of MaxQ (SPEC §2), which the API and the scheduler both call.

L{Engine} is a thin facade: each method validates what needs no transaction
and runs one unit of a room through L{unit.transact_many} (see L{unit} for
the replay rule); step and flow.sh exits go through a L{unit.TurnBatch}.  The rooms:

  - L{unit}: effects, process control, transactions, the announcement
  - L{runs}: the writes requests drive (runs, fields, logs) and the claim
  - L{stages}: scheduling a stage, its reuse and re-posts
  - L{outcomes}: a step's result, retries, the failure cascade
  - L{completion}: the end of a stage, a flow call and a run
  - L{control}: abort, retry, pause, resume
  - L{recovery}: requeued and interrupted work, process groups
  - L{queries}: the reads
  - L{schedules}, L{backfills}, L{schedule_log}: schedules' fires, pauses
    and backfills (SPEC §5)
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from maxq.engine import (
    backfills, completion, control, limits, outcomes, queries, recovery, runs, schedules,
    stages,
)
from maxq.engine.recovery import MAX_INTERRUPTIONS
from maxq.engine.unit import (Context, Effects, NoProcesses, ProcessControl, TurnBatch,
                              transact_many)
from maxq.flows import FlowsRoot

__all__ = ["Engine", "Effects", "MAX_INTERRUPTIONS", "ProcessControl"]


class Engine:
    log = Logger()

    def __init__(self, store, flows: FlowsRoot, config, clock, leftovers=None,
                 hooks=None, on_events=None):
        self.store = store
        self.flows = flows
        self.config = config
        self.clock = clock
        self.rules = Context(store, flows, config, clock, limits.FlowControl(
            flows, clock, config.labels, config.scheduler_interval_ms / 1000.0))
        self.control: ProcessControl = NoProcesses()
        # Terminates what a dead server left running (recover_interrupted):
        # C{async terminate([(run_id, step_id or None, pgid or None)]) -> int};
        # None where nothing can be left (tests with fake processes).
        self.leftovers = leftovers
        # Whether other servers may share the database and must be told.
        self.broadcast = store.peers.shared
        # Metrics and notifications (maxq.operations.OperationsHooks); None
        # counts and notifies nothing.
        self.hooks = hooks
        # Called after each commit that wrote events (the event streams).
        self.event_listeners: list = [on_events] if on_events is not None else []
        # Step and flow.sh exits the reactor reports in one turn commit
        # together.
        self._exits = TurnBatch(clock, self._transact_many, self._transact_counting)

    def now(self) -> int:
        return self.rules.now()

    async def _transact_counting(self, fn, *args):
        """
        Run C{fn(tx, effects, *args)} as one unit; returns its result and how
        many processes were terminated.
        """
        [outcome] = await self._transact_many([(fn, args)])
        return outcome

    async def _transact_many(self, calls: list) -> list:
        """
        Run each C{(fn, args)} of C{calls} in one transaction (see
        L{transact_many}); returns their C{(result, terminated)} in order.
        """
        return await transact_many(self.store, self.control, self.broadcast,
                                   self.config.worker_id, calls, hooks=self.hooks,
                                   clock=self.clock, on_events=self._events_committed)

    def _events_committed(self) -> None:
        for listener in self.event_listeners:
            listener()

    async def _transact(self, fn, *args):
        result, _killed = await self._transact_counting(fn, *args)
        return result

    async def _unit(self, room_fn, *args):
        """
        Run the room's C{room_fn(ctx, tx, effects, *args)} as one unit.
        """
        return await self._transact(
            lambda tx, effects: room_fn(self.rules, tx, effects, *args))

    # ------------------------------------------------------------------ runs

    async def create_run(self, flow_name: str, body: Any,
                         idempotency_key: str | None) -> tuple[dict, bool]:
        """
        Trigger C{flow_name}.  Returns C{(run, created)}: C{created} is
        False when C{idempotency_key} names a run that already exists.
        """
        runs.check_create_run(self.rules, flow_name, body, idempotency_key)
        return await self._unit(runs.create_run, flow_name, body, idempotency_key)

    async def get_run(self, run_id: str) -> dict:
        return await queries.get_run(self.rules, run_id)

    async def run_finished(self, run_id: str) -> bool:
        """
        True when the run is completed or failed (or does not exist).
        """
        return await queries.run_finished(self.rules, run_id)

    async def list_runs(self, page, flow_name=None, status=None):
        """
        One L{maxq.model.Page} of runs, C{(rows, total)}.
        """
        return await queries.list_runs(self.rules, page, flow_name=flow_name,
                                       status=status)

    async def patch_run(self, run_id: str, body: Any) -> dict:
        runs.check_patch_run(body)
        return await self._unit(runs.patch_run, run_id, body)

    # ---------------------------------------------------------------- stages

    async def schedule_stage(self, run_id: str, body: Any) -> dict:
        """
        C{POST /runs/{id}/steps}: validate everything, then insert the stage
        and its steps in one transaction.
        """
        spec = await stages.check_stage(self.rules, run_id, body)
        return await self._unit(stages.schedule_stage, run_id, spec)

    # ----------------------------------------------------------- run control

    async def abort(self, run_id: str) -> dict:
        outcome, killed = await self._transact_counting(
            lambda tx, effects: control.abort(self.rules, tx, effects, run_id))
        return control.abort_answer(run_id, outcome, killed)

    async def retry_run(self, run_id: str) -> dict:
        return await self._unit(control.retry_run, run_id)

    async def pause(self, run_id: str) -> dict:
        return await self._unit(control.pause, run_id)

    async def resume(self, run_id: str) -> dict:
        return await self._unit(control.resume, run_id)

    async def retry_step(self, run_id: str, step_id: str) -> dict:
        return await self._unit(control.retry_step, run_id, step_id)

    # ------------------------------------------------------ steps and fields

    async def list_steps(self, run_id, page, stage=None, status=None, name=None):
        return await queries.list_steps(self.rules, run_id, page, stage=stage,
                                        status=status, name=name)

    async def get_step(self, run_id: str, step_id: str) -> dict:
        return await queries.get_step(self.rules, run_id, step_id)

    async def post_fields(self, run_id: str, step_id: str, body: Any) -> dict:
        runs.check_post_fields(body)
        return await self._unit(runs.post_fields, run_id, step_id, body)

    async def get_fields(self, run_id: str, step_ids: list[str] | None,
                         field_name: str | None) -> list[dict]:
        return await queries.get_fields(self.rules, run_id, step_ids, field_name)

    # ------------------------------------------------------------------ logs

    async def add_log(self, run_id: str, body: Any) -> dict:
        runs.check_add_log(body)
        return await self._unit(runs.add_log, run_id, body)

    async def list_logs(self, run_id, page, entity_type=None, entity_id=None,
                        level=None):
        return await queries.list_logs(self.rules, run_id, page,
                                       entity_type=entity_type, entity_id=entity_id,
                                       level=level)

    # ----------------------------------------------------------------- pools

    async def list_pools(self) -> list[dict]:
        return await self.store.read(lambda tx: tx.list_pools())

    async def put_pool(self, name: str, body: Any) -> dict:
        slots = limits.check_pool(name, body)
        return await self._unit(limits.put_pool, name, slots)

    async def delete_pool(self, name: str) -> dict:
        limits.check_pool_name(name)
        return await self._unit(limits.delete_pool, name)

    async def create_pools(self, pools: dict[str, int]) -> None:
        """
        Create or resize the pools of C{MAXQ_POOLS} (at start).
        """
        if pools:
            await self._unit(limits.create_pools, pools)

    # -------------------------------------------------------------- cluster

    async def running_on(self, worker_id: str) -> tuple[list[dict], list[dict]]:
        """
        The steps and flow calls the database says run on C{worker_id}.
        """
        return await queries.running_on(self.rules, worker_id)

    # ------------------------------------------------------------- scheduler

    async def claim(self, worker_id: str, call_limit: int, step_limit: int,
                    server_full: bool = False) -> tuple[list[dict], list[dict]]:
        """
        Claim up to C{call_limit} due flow calls and up to C{step_limit}
        runnable steps for C{worker_id}, in one transaction (C{server_full}:
        the step limit is the server's free capacity, not the batch).
        """
        return await self._unit(runs.claim, worker_id, call_limit, step_limit,
                                server_full)

    async def step_finished(self, run_id: str, step_id: str, claim_no: int, result):
        """
        A step's process ended (or could not start): record the attempt and
        apply retries, the failure cascade and the stage's end.
        """
        await self._exits.submit(self._step_finished, run_id, step_id, claim_no, result)

    def _step_finished(self, tx, effects, *args):
        return outcomes.step_finished(self.rules, tx, effects, *args)

    async def flow_call_finished(self, call_id: int, result):
        # In the same batch as step exits: the exits of one turn commit in
        # the order the reactor reported them.
        await self._exits.submit(self._flow_call_finished, call_id, result)

    def _flow_call_finished(self, tx, effects, *args):
        return completion.flow_call_finished(self.rules, tx, effects, *args)

    async def requeue_step(self, run_id: str, step_id: str, claim_no: int):
        """
        The server stopped gracefully while the step ran: it goes back to
        pending without spending a retry, to run again on the next start.
        A graceful stop is not counted as an interruption.
        """
        await self._unit(recovery.requeue_step, run_id, step_id, claim_no)

    async def requeue_flow_call(self, call_id: int):
        """
        The server stopped while flow.sh ran: the callback is delivered again
        on the next start.
        """
        await self._unit(recovery.requeue_flow_call, call_id)

    async def record_pgids(self, steps: list[tuple[str, str, int, int]],
                           calls: list[tuple[int, int]]) -> None:
        """
        Remember the process group of each started step C{(run_id, step_id,
        claim_no, pgid)} and flow call C{(call_id, pgid)}, in one transaction,
        so that a restart after a crash can find what is left of them.
        """
        await recovery.record_pgids(self.rules, steps, calls)

    async def recover_interrupted(self, worker_ids: list[str] | None,
                                  reason: str) -> dict:
        """
        Put back the work that was running under C{worker_ids} (None: every
        worker) when its server died; see L{recovery.recover_interrupted}.
        Returns counts.
        """
        return await recovery.recover_interrupted(
            self.rules, self._transact, self.leftovers, worker_ids, reason)

    # ------------------------------------------------------------- schedules

    async def fire_schedule(self, flow_name: str, spec, upto_ms: int) -> dict:
        """
        Make the runs of the flow's fire times up to C{upto_ms}, in one
        transaction (L{schedules.fire}).
        """
        return await self._unit(schedules.fire, flow_name, spec, upto_ms)

    async def fire_schedules(self, fires: list[tuple]) -> dict:
        """
        Several flows' fires C{(flow_name, spec, upto_ms)} in one
        transaction (L{schedules.fire_many}); C{{flow_name: result}}.
        """
        return await self._unit(schedules.fire_many, fires)

    async def pause_schedule(self, flow_name: str, paused: bool):
        return await self._unit(schedules.set_paused, flow_name, paused)

    async def schedule_entry(self, flow_name: str):
        return await schedules.get_entry(self.rules, flow_name)

    async def schedule_entries(self):
        return await schedules.list_entries(self.rules)

    async def schedule_log(self, flow_name: str, limit: int):
        return await schedules.list_log(self.rules, flow_name, limit)

    async def create_backfill(self, flow_name: str, body: Any) -> dict:
        plan = backfills.check_backfill(self.rules, flow_name, body)
        return await self._unit(backfills.create_backfill, plan)

    async def get_backfill(self, backfill_id: str) -> dict:
        return await backfills.get_backfill(self.rules, backfill_id)

    async def list_backfills(self, flow_name: str) -> list[dict]:
        return await backfills.list_backfills(self.rules, flow_name)

    async def cancel_backfill(self, backfill_id: str) -> dict:
        return await self._unit(backfills.cancel_backfill, backfill_id)
