"""
Flow control (SPEC §6), the pure part: the new fields of a stage request
and of flow.yaml checked, input references parsed and resolved, wait
reasons built, and the decision of a limited claim (which candidates run,
which wait and why).  No I/O: the store counts, this module decides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from maxq import flowconfig
from maxq.errors import Invalid, validation_error

PRIORITY_MIN, PRIORITY_MAX = -100, 100
MAX_LIMIT = 1_000_000
MAX_LABELS = 32
MAX_INPUTS = 256
# How many candidates one limited claim looks at: past the first ones held
# back, the next ones may still fit (another pool, another flow).
CANDIDATES = 200

FLOW_LIMIT = "flow_limit"
FLOW_STEP_LIMIT = "flow_step_limit"
STAGE_LIMIT = "stage_limit"
POOL = "pool"
NO_WORKER = "no_worker"
SERVER_LIMIT = "server_limit"

STEP_KEYS = ("pool", "poolSlots", "priority", "requires", "continueOnFailure", "inputs")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _name_ok(value: Any) -> bool:
    from maxq.model import valid_name
    return valid_name(value)


def check_priority(value: Any, field_name: str = "priority", **details) -> int:
    if not _is_int(value) or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise validation_error(
            f"{field_name} must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}",
            field=field_name, **details)
    return value


def parse_labels(value: Any, what: str, text: bool = False) -> list[str]:
    """
    A list of label names (with C{text}, a comma text too); raises ValueError.
    """
    if text and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(_name_ok(v) for v in value):
        raise ValueError(f"{what} must be a list of names matching ^[A-Za-z0-9_-]+$")
    if len(value) > MAX_LABELS:
        raise ValueError(f"{what} may name at most {MAX_LABELS} labels")
    return sorted(set(value))


# --------------------------------------------------------------- stage request

def parse_max_parallel(body: dict) -> int | None:
    value = body.get("maxParallel")
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= MAX_LIMIT:
        raise validation_error("maxParallel must be a positive integer",
                               field="maxParallel")
    return value


def parse_step(raw: dict, step_id: str, where: str,
               env_key_problem: Callable[[str], str | None]) -> dict:
    """
    The §6 fields of one step of a stage request (absent ones left out, so
    that the flow's defaults apply).
    """
    out: dict = {}
    pool = raw.get("pool")
    if pool is not None:
        if not _name_ok(pool):
            raise validation_error(f"{where}.pool must be a pool name", stepId=step_id)
        out["pool"] = pool
    slots = raw.get("poolSlots")
    if slots is not None:
        if not _is_int(slots) or not 1 <= slots <= MAX_LIMIT:
            raise validation_error(f"{where}.poolSlots must be a positive integer",
                                   stepId=step_id)
        out["pool_slots"] = slots
    if raw.get("priority") is not None:
        out["priority"] = check_priority(raw["priority"], f"{where}.priority",
                                         stepId=step_id)
    if raw.get("requires") is not None:
        try:
            out["requires"] = parse_labels(raw["requires"], f"{where}.requires")
        except ValueError as e:
            raise validation_error(str(e), stepId=step_id) from None
    cof = raw.get("continueOnFailure", False)
    if not isinstance(cof, bool):
        raise validation_error(f"{where}.continueOnFailure must be a boolean",
                               stepId=step_id)
    out["continue_on_failure"] = cof
    inputs = raw.get("inputs")
    if inputs is not None:
        out["inputs"] = _parse_inputs(inputs, step_id, env_key_problem)
    return out


def _parse_inputs(inputs: Any, step_id: str, env_key_problem) -> dict[str, str]:
    if not isinstance(inputs, dict) or len(inputs) > MAX_INPUTS:
        raise Invalid("INVALID_INPUT",
                      f"inputs must be an object of at most {MAX_INPUTS} entries",
                      stepId=step_id)
    for name, ref in inputs.items():
        problem = env_key_problem(name)
        if problem:
            raise Invalid("INVALID_INPUT", f"input name {name!r} {problem}",
                          stepId=step_id, input=name)
        if parse_ref(ref) is None:
            raise Invalid(
                "INVALID_INPUT",
                f"input {name!r} must be \"STEP_ID.FIELD[.KEY...]\" or "
                f"\"input.KEY[.KEY...]\"", stepId=step_id, input=name)
    return dict(inputs)


def parse_ref(ref: Any) -> tuple[str | None, list[str]] | None:
    """
    C{(step_id, path)} of a reference (C{step_id} None for the run's
    input), or None when it is not one.
    """
    if not isinstance(ref, str) or len(ref) > 1024:
        return None
    parts = ref.split(".")
    if len(parts) < 2 or not all(parts):
        return None
    if parts[0] == "input":
        return None, parts[1:]
    if not _name_ok(parts[0]):
        return None
    return parts[0], parts[1:]


def input_steps(inputs: dict | None) -> set[str]:
    """
    The step ids the references of C{inputs} name.
    """
    found = set()
    for ref in (inputs or {}).values():
        parsed = parse_ref(ref)
        if parsed is not None and parsed[0] is not None:
            found.add(parsed[0])
    return found


_MISSING = object()


def dig(value: Any, path: list[str]) -> Any:
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
    return value


def resolve_inputs(inputs: dict, run_input: Any,
                   fields: dict[str, dict]) -> tuple[dict[str, str], str | None]:
    """
    The env values of C{inputs} from the run's input and the steps'
    fields; and the first input name whose value is missing (or None).
    """
    env = {}
    for name, ref in inputs.items():
        step_id, path = parse_ref(ref)
        root = run_input if step_id is None else fields.get(step_id, _MISSING)
        value = _MISSING if root is _MISSING else dig(root, path)
        if value is _MISSING or value is None:
            return env, name
        env[name] = value if isinstance(value, str) else json.dumps(
            value, separators=(",", ":"))
    return env, None


# ------------------------------------------------------------------- flow.yaml

def parse_section(raw: dict) -> dict:
    """
    The "control" section of flow.yaml: maxActiveRuns (or its old name
    concurrency), maxRunningSteps, priority, pool and requires.
    """
    out: dict = {}
    runs = raw.get("maxActiveRuns", raw.get("concurrency"))
    key = "maxActiveRuns" if "maxActiveRuns" in raw else "concurrency"
    for name, value in ((key, runs), ("maxRunningSteps", raw.get("maxRunningSteps"))):
        if value is None:
            continue
        if not _is_int(value) or not 1 <= value <= MAX_LIMIT:
            raise flowconfig.BadConfig(f"{name} must be a positive integer")
        out["max_active_runs" if name != "maxRunningSteps" else "max_running_steps"] = value
    if raw.get("priority") is not None:
        value = raw["priority"]
        if not _is_int(value) or not PRIORITY_MIN <= value <= PRIORITY_MAX:
            raise flowconfig.BadConfig(
                f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}")
        out["priority"] = value
    if raw.get("pool") is not None:
        if not _name_ok(raw["pool"]):
            raise flowconfig.BadConfig("pool must be a pool name")
        out["pool"] = raw["pool"]
    if raw.get("requires") is not None:
        try:
            out["requires"] = parse_labels(raw["requires"], "requires", text=True)
        except ValueError as e:
            raise flowconfig.BadConfig(str(e)) from None
    return out


flowconfig.SECTIONS.append(("control", parse_section))


# ---------------------------------------------------------------- wait reasons

def wait(reason: str, **details) -> dict:
    return {"reason": reason, **details}


@dataclass
class Counts:
    """
    What runs now against the limits a claim touches.
    """
    flow_steps: dict[str, int] = field(default_factory=dict)
    stage_steps: dict[tuple[str, str], int] = field(default_factory=dict)
    pool_used: dict[str, int] = field(default_factory=dict)
    pool_slots: dict[str, int] = field(default_factory=dict)


def decide(candidates: list[dict], counts: Counts, flow_step_limits: dict[str, int],
           labels: set[str], live_labels: list[set[str]] | None,
           limit: int, server_limit: int | None) -> tuple[list[dict], dict]:
    """
    Walk C{candidates} in claim order and take what fits: at most C{limit},
    within every flow, stage and pool limit, requiring only C{labels}.
    Returns the taken rows and C{{(run_id, step_id): wait reason}} for
    candidates held back here; others are left unchanged (a step another
    live server may take, or one past C{limit} when C{server_limit} is None,
    i.e. the batch and not the server is full).  Within a pool nothing overtakes a step held back for
    want of slots, so a step needing many slots is not starved by small ones.
    C{live_labels}: the labels of every live server (None: this one alone).
    """
    taken: list[dict] = []
    waits: dict = {}
    blocked_pools: set[str] = set()
    for row in candidates:
        key = (row["run_id"], row["id"])
        requires = set(row.get("requires") or ())
        if not requires <= labels:
            # Left as it is when another live server can take it: that one
            # says why it waits, or clears it by claiming it.
            if not (live_labels and any(requires <= other for other in live_labels)):
                waits[key] = wait(NO_WORKER, requires=sorted(requires))
            continue
        flow = row["flow_name"]
        flow_limit = flow_step_limits.get(flow)
        if flow_limit is not None and counts.flow_steps.get(flow, 0) >= flow_limit:
            waits[key] = wait(FLOW_STEP_LIMIT, limit=flow_limit, flow=flow)
            continue
        stage_key = (row["run_id"], row["stage"])
        stage_limit = row.get("max_parallel")
        if stage_limit is not None and counts.stage_steps.get(stage_key, 0) >= stage_limit:
            waits[key] = wait(STAGE_LIMIT, limit=stage_limit, stage=row["stage"])
            continue
        pool = row.get("pool")
        need = row.get("pool_slots") or 1
        if pool is not None:
            slots = counts.pool_slots.get(pool, 0)
            used = counts.pool_used.get(pool, 0)
            if pool in blocked_pools or used + need > slots:
                blocked_pools.add(pool)
                waits[key] = wait(POOL, pool=pool, slots=slots, need=need)
                continue
        if len(taken) >= limit:
            if server_limit is not None:
                waits[key] = wait(SERVER_LIMIT, limit=server_limit)
            continue
        taken.append(row)
        counts.flow_steps[flow] = counts.flow_steps.get(flow, 0) + 1
        counts.stage_steps[stage_key] = counts.stage_steps.get(stage_key, 0) + 1
        if pool is not None:
            counts.pool_used[pool] = counts.pool_used.get(pool, 0) + need
    return taken, waits
