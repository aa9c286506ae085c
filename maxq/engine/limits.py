"""
Flow control in the claim (SPEC §6): the limited start of runs
(C{maxActiveRuns}), the limited claim of steps (flow C{maxRunningSteps},
stage C{maxParallel}, pools, C{requires}), their wait reasons, and the
inputs a claimed step gets.

The plain claims (L{maxq.engine.runs.claim}) take what no limit holds back
and count nothing, so a server without limits pays nothing for them.  The
limited claim runs in the same transaction, after the plain one, and only
when there may be limited work: L{FlowControl} remembers whether there was
any at the last look, is told when a unit makes some (a gated stage, a
gated step ending, a pool resized), and looks again at least every
scheduler interval for work another server made.  That memory is a hint,
never a decision: replaying a unit that set it costs one look more.
"""

from __future__ import annotations

import os

from maxq import control
from maxq.control import Counts
from maxq.errors import Conflict, Invalid, NotFound
from maxq.flows import FlowsRoot
from maxq.model import valid_name

# How long the flows' limits are kept before flow.yaml is asked again.
LIMITS_CACHE_S = 1.0


class FlowControl:
    """
    This server's view of the limits: its labels, the flows' limits (read
    from flow.yaml, cached for L{LIMITS_CACHE_S}) and whether limited steps
    may be waiting.
    """

    def __init__(self, flows: FlowsRoot, clock, labels=(), interval_s: float = 0.2):
        self.flows = flows
        self.clock = clock
        self.labels = set(labels)
        self.interval_s = interval_s
        self._limits: dict[str, dict] = {}
        self._limits_at = None
        self._serial = 0
        # Limited steps may be waiting (a hint; see the module docstring).
        self.gated = True
        self._looked_at = None

    def flow_limits(self) -> dict[str, dict]:
        """
        C{{flow: control section}} of the flows that set maxActiveRuns or
        maxRunningSteps.
        """
        now = self.clock.seconds()
        if self._limits_at is not None and now - self._limits_at < LIMITS_CACHE_S:
            return self._limits
        serial = self.flows.change_serial()
        # With the flows watched (maxq.flowwatch), only those that changed.
        changed = self.flows.changed_since(self._serial) \
            if self._limits_at is not None else None
        if changed is None:
            try:
                changed = os.listdir(self.flows.root)
            except OSError:
                changed = []
            found = {}
        else:
            found = {f: s for f, s in self._limits.items() if f not in changed}
        for name in changed:
            if not valid_name(name):
                continue
            section = self.flows.config(name).section("control")
            if "max_active_runs" in section or "max_running_steps" in section:
                found[name] = section
        self._limits, self._limits_at, self._serial = found, now, serial
        return found

    def defaults(self, flow: str) -> dict:
        """
        The flow's control section, as its flow.yaml says now; a flow whose
        limits the cached view does not know yet (a new flow, an edit) is
        known from here on.
        """
        section = self.flows.config(flow).section("control")
        limited = "max_active_runs" in section or "max_running_steps" in section
        if self._limits_at is not None and (self._limits.get(flow) != section
                                            if limited else flow in self._limits):
            self._limits = {f: s for f, s in self._limits.items() if f != flow}
            if limited:
                self._limits[flow] = section
        return section

    def poke(self) -> None:
        self.gated = True

    def due(self) -> bool:
        now = self.clock.seconds()
        if self.gated or self._looked_at is None or now - self._looked_at >= self.interval_s:
            self._looked_at = now
            return True
        return False


def stage_columns(fc: FlowControl, flow: str, run: dict, spec) -> dict[str, dict]:
    """
    C{{step id: its §6 columns}} for a stage being scheduled (flow.yaml read
    once for the stage).
    """
    defaults = fc.defaults(flow)
    return {step.id: step_columns(defaults, run, spec, step) for step in spec.steps}


def step_columns(defaults: dict, run: dict, spec, step) -> dict:
    """
    The §6 columns of a step being scheduled: the stage request's values,
    else the flow.yaml defaults (C{defaults}), else the run's priority.
    """
    own = step.control
    pool = own.get("pool", defaults.get("pool"))
    requires = own.get("requires", defaults.get("requires")) or None
    gate = (pool is not None or requires or spec.max_parallel is not None
            or "max_running_steps" in defaults)
    return {
        "priority": own.get("priority", run.get("priority") or 0),
        "pool": pool, "pool_slots": own.get("pool_slots", 1),
        "requires": requires, "max_parallel": spec.max_parallel,
        "continue_on_failure": int(own.get("continue_on_failure", False)),
        "inputs": own.get("inputs"), "gate": 1 if gate else None,
    }


def run_priority(fc: FlowControl, flow: str, body: dict) -> int:
    if body.get("priority") is not None:
        return control.check_priority(body["priority"])
    return fc.defaults(flow).get("priority", 0)


async def start_limited_runs(ctx, tx, worker_id, now, limit, limits):
    """
    Start pending runs of the flows with maxActiveRuns, in order of
    priority then age, as far as each flow's limit allows; the first flow
    calls of those started.  The others wait with C{flow_limit}.
    """
    flows = {f: s["max_active_runs"] for f, s in limits.items() if "max_active_runs" in s}
    if not flows or limit <= 0:
        return []
    pending = await tx.pending_runs_of(flows, control.CANDIDATES)
    if not pending:
        return []
    touched = sorted({r["flow_name"] for r in pending})
    await tx.lock_limits([f"runs/{f}" for f in touched], [])
    running = await tx.running_runs_of(touched)
    start, waits = [], {}
    for run in pending:
        flow = run["flow_name"]
        if running.get(flow, 0) < flows[flow] and len(start) < limit:
            running[flow] = running.get(flow, 0) + 1
            start.append(run["id"])
            continue
        if len(start) >= limit and running.get(flow, 0) < flows[flow]:
            continue
        reason = control.wait(control.FLOW_LIMIT, limit=flows[flow], flow=flow)
        if run["wait_reason"] != reason:
            waits[run["id"]] = reason
    await tx.set_run_waits(waits)
    return await tx.claim_first_calls(worker_id, now, start)


async def claim_limited_steps(ctx, tx, worker_id, now, limit, limits, server_full):
    """
    Claim up to C{limit} steps some limit may hold back, within every limit;
    record why the others wait (only where that changed).
    """
    fc: FlowControl = ctx.control
    step_limits = {f: s["max_running_steps"] for f, s in limits.items()
                   if "max_running_steps" in s}
    candidates = await tx.gated_candidates(now, control.CANDIDATES, step_limits)
    if not candidates:
        # Limited steps waiting for their dependencies become runnable when
        # a step of any kind ends: keep looking while there are some.
        fc.gated = await tx.gated_pending()
        return []
    fc.gated = True
    flows = {c["flow_name"] for c in candidates
             if c["flow_name"] in step_limits or c["max_parallel"] is not None}
    pools = {c["pool"] for c in candidates if c["pool"] is not None}
    await tx.lock_limits([f"steps/{f}" for f in flows], pools)
    staged = {c["run_id"] for c in candidates if c["max_parallel"] is not None}
    flow_counts, stage_counts, pool_used, slots = await tx.running_counts(
        [f for f in flows if f in step_limits], staged, pools)
    counts = Counts(flow_counts, stage_counts, pool_used, slots)
    live = None
    if any(not set(c["requires"] or ()) <= fc.labels for c in candidates):
        live = await tx.live_worker_labels()
    taken, waits = control.decide(
        candidates, counts, step_limits, fc.labels, live, limit,
        ctx.config.max_concurrent_steps if server_full else None)
    current = {(c["run_id"], c["id"]): c["wait_reason"] for c in candidates}
    await tx.set_step_waits({k: v for k, v in waits.items() if current[k] != v})
    if not taken:
        return []
    return await tx.claim_listed_steps(worker_id, now,
                                       [(c["run_id"], c["id"]) for c in taken])


async def give_inputs(tx, steps) -> None:
    """
    Resolve the inputs of claimed steps: each gets C{input_env}, or
    C{missing_input} (the first input whose value is missing).
    """
    for step in steps:
        inputs = step.get("inputs")
        if not inputs:
            continue
        run = await tx.get_run(step["run_id"])
        ids = sorted(control.input_steps(inputs))
        rows = await tx.get_fields(step["run_id"], ids) if ids else []
        fields = {r["id"]: r["fields"] or {} for r in rows}
        env, missing = control.resolve_inputs(inputs, run["input"], fields)
        step["input_env"] = env
        if missing is not None:
            step["missing_input"] = missing


async def check_stage_control(tx, run_id, spec, columns) -> None:
    """
    The §6 checks of a stage that need the database: every pool exists
    (C{UNKNOWN_POOL}), and every input names a step the step depends on,
    directly or transitively (C{INVALID_INPUT}).
    """
    pools = {c["pool"] for c in columns.values() if c["pool"] is not None}
    missing = sorted(pools - await tx.existing_pools(pools))
    if missing:
        step = next(s for s in spec.steps if columns[s.id]["pool"] == missing[0])
        raise Invalid("UNKNOWN_POOL", f"there is no pool {missing[0]!r}",
                      pool=missing[0], stepId=step.id)
    wanted = {s.id: control.input_steps(s.control.get("inputs")) for s in spec.steps}
    if not any(wanted.values()):
        return
    own = {s.id: s.depends_on for s in spec.steps}

    def closure(step_id: str) -> tuple[set[str], set[str]]:
        seen, outside, frontier = set(), set(), list(own[step_id])
        while frontier:
            dep = frontier.pop()
            if dep in seen or dep in outside:
                continue
            if dep in own:
                seen.add(dep)
                frontier.extend(own[dep])
            else:
                outside.add(dep)
        return seen, outside

    for step in spec.steps:
        if not wanted[step.id]:
            continue
        inside, outside = closure(step.id)
        allowed = inside | outside
        if not wanted[step.id] <= allowed and outside:
            allowed |= await tx.ancestors(run_id, outside)
        bad = sorted(wanted[step.id] - allowed)
        if bad:
            name = next(n for n, ref in step.control["inputs"].items()
                        if control.parse_ref(ref)[0] == bad[0])
            raise Invalid(
                "INVALID_INPUT",
                f"input {name!r} of step {step.id!r} names step {bad[0]!r}, "
                f"which it does not depend on", stepId=step.id, input=name,
                step=bad[0])


# ------------------------------------------------------------------ pools

def check_pool_name(name: str) -> None:
    if not valid_name(name):
        raise Invalid("VALIDATION_ERROR", "a pool name must match ^[A-Za-z0-9_-]+$",
                      pool=name)


def check_pool(name: str, body) -> int:
    """
    The slots of a C{PUT /pools/{name}} body.
    """
    check_pool_name(name)
    if not isinstance(body, dict) or set(body) - {"slots"}:
        raise Invalid("VALIDATION_ERROR", 'body must be {"slots": n}')
    slots = body.get("slots")
    if not isinstance(slots, int) or isinstance(slots, bool) \
            or not 0 <= slots <= control.MAX_LIMIT:
        raise Invalid("VALIDATION_ERROR",
                      f"slots must be an integer from 0 to {control.MAX_LIMIT}",
                      field="slots")
    return slots


async def put_pool(ctx, tx, effects, name, slots):
    await tx.put_pool(name, slots)
    # More slots may let waiting steps run, here and on the other servers.
    ctx.control.poke()
    effects.wake = True
    return await tx.get_pool(name)


async def delete_pool(ctx, tx, effects, name):
    if await tx.get_pool(name) is None:
        raise NotFound("POOL_NOT_FOUND", f"there is no pool {name!r}", pool=name)
    if await tx.pool_in_use(name):
        raise Conflict("POOL_IN_USE",
                       f"pool {name!r} is named by steps that have not finished",
                       pool=name)
    await tx.delete_pool(name)
    return {"deleted": name}


async def create_pools(ctx, tx, effects, pools: dict[str, int]):
    """
    The pools of C{MAXQ_POOLS}, created or resized at start.
    """
    for name, slots in sorted(pools.items()):
        await tx.put_pool(name, slots)
