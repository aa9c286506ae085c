"""
The vocabulary of MaxQ and its pure rules: statuses, name and env
validation, the stage request's shape, DAG checks and retry backoff.
Standard library only; nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from maxq import control
from maxq.errors import Invalid, validation_error

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME_LENGTH = 128

# Run statuses.
PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
PAUSED = "paused"
CANCELLED = "cancelled"

RUN_STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, PAUSED)
STAGE_STATUSES = (PENDING, RUNNING, COMPLETED, FAILED)
STEP_STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
RUN_FINISHED = (COMPLETED, FAILED)
RUN_ACTIVE = (PENDING, RUNNING, PAUSED)
STEP_FINISHED = (COMPLETED, FAILED, CANCELLED)

LOG_ENTITY_TYPES = ("run", "stage", "step", "flow")
LOG_LEVELS = ("debug", "info", "warn", "error")

# Why the server stopped or skipped something (terminationReason).
ABORTED = "aborted"
TIMEOUT = "timeout"
FLOW_FAILED = "flow_failed"
PAUSED_BY_USER = "paused"

# Environment keys a step may not set: they change how a program is loaded or
# how a shell starts, and so would let a request run code of its choosing.
FORBIDDEN_ENV_KEYS = frozenset(
    {
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "IFS",
        "PROMPT_COMMAND",
        "CDPATH",
        "GLOBIGNORE",
        "PYTHONSTARTUP",
        "PYTHONPATH",
        "PERL5OPT",
        "PERL5LIB",
        "RUBYOPT",
        "NODE_OPTIONS",
        "GCONV_PATH",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "RES_OPTIONS",
        "MALLOC_CHECK_",
        "TMPDIR_EXEC",
    }
)
FORBIDDEN_ENV_PREFIXES = ("LD_", "BASH_FUNC_", "DYLD_", "MAXQ_")
# The one MAXQ_ key a step may set: its own timeout, per SPEC §2.
STEP_TIMEOUT_ENV = "MAXQ_STEP_TIMEOUT"
MAX_ENV_ENTRIES = 256
MAX_ENV_VALUE_BYTES = 32 * 1024
# All of one step's env together (keys and values): far below what execve
# accepts, with room for the server's own environment.
MAX_ENV_TOTAL_BYTES = 256 * 1024

# Sizes of what requests store, in bytes of UTF-8 (compact JSON for JSON
# values).  A request over one is a 400 and changes nothing.
MAX_VALUE_BYTES = 1024 * 1024          # a run's input, metadata and output, each
MAX_FIELDS_BYTES = 1024 * 1024         # one step's fields, after the merge
MAX_LOG_MESSAGE_BYTES = 64 * 1024
MAX_LOG_METADATA_BYTES = 64 * 1024
MAX_RUN_NAME_BYTES = 1024
MAX_DESCRIPTION_BYTES = 64 * 1024


def json_size(value: Any) -> int:
    """
    The size of C{value} as compact UTF-8 JSON.
    """
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False)
               .encode("utf-8", "surrogatepass"))


def check_size(value: Any, what: str, limit: int, code: str = "VALUE_TOO_LARGE",
               text: bool = False, **details) -> None:
    """
    Raise a 400 C{code} when C{value} is larger than C{limit} bytes: its
    UTF-8 bytes when C{text}, else its size as compact JSON.
    """
    if value is None:
        return
    size = len(value.encode("utf-8", "surrogatepass")) if text else json_size(value)
    if size > limit:
        raise Invalid(code, f"{what} is {size} bytes; the limit is {limit}",
                       field=what, limit=limit, size=size, **details)


def _check_text(body: dict, key: str, limit: int) -> None:
    value = body.get(key)
    if not isinstance(value, str):
        return
    check_size(value, key, limit, text=True)
    if "\0" in value:
        raise validation_error(f"{key} may not contain NUL characters", field=key)


def check_run_limits(body: Any) -> None:
    """
    The size limits of a run's C{input}, C{metadata}, C{output}, C{name} and
    C{description} (a trigger or a PATCH body); shapes are checked elsewhere.
    """
    if not isinstance(body, dict):
        return
    for key in ("input", "metadata", "output"):
        if key in body:
            check_size(body[key], key, MAX_VALUE_BYTES)
    _check_text(body, "name", MAX_RUN_NAME_BYTES)
    _check_text(body, "description", MAX_DESCRIPTION_BYTES)


def check_log_limits(body: Any) -> None:
    """
    The size limits of a log entry's C{message}, C{metadata} and
    C{entityId}.
    """
    if not isinstance(body, dict):
        return
    _check_text(body, "message", MAX_LOG_MESSAGE_BYTES)
    if "metadata" in body:
        check_size(body["metadata"], "metadata", MAX_LOG_METADATA_BYTES)
    entity_id = body.get("entityId")
    if isinstance(entity_id, str) and len(entity_id) > MAX_NAME_LENGTH:
        raise validation_error(
            f"entityId may have at most {MAX_NAME_LENGTH} characters", field="entityId",
            limit=MAX_NAME_LENGTH,
        )
    _check_text(body, "entityId", MAX_NAME_LENGTH * 4)


def check_fields_size(fields: dict, step_id: str) -> None:
    """
    One step's fields, as they would be stored after a merge, fit the limit.
    """
    check_size(fields, "fields", MAX_FIELDS_BYTES, "FIELDS_TOO_LARGE", stepId=step_id)


def valid_name(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NAME_LENGTH
        and NAME_RE.match(value) is not None
    )


def env_key_problem(key: str) -> str | None:
    """
    Why C{key} may not be set in a step's environment, or None if it may.
    """
    if not ENV_KEY_RE.match(key):
        return "must match ^[A-Za-z_][A-Za-z0-9_]*$"
    if key == STEP_TIMEOUT_ENV:
        return None
    upper = key.upper()
    if upper in FORBIDDEN_ENV_KEYS or upper.startswith(FORBIDDEN_ENV_PREFIXES):
        return "may not be set by a step (reserved or changes how programs start)"
    return None


def retry_delay_ms(retry_delay: int, backoff: float, retry_number: int) -> float:
    """
    The wait before retry C{retry_number} (1 for the first retry):
    C{retry_delay * backoff ** (retry_number - 1)}, capped at one day.
    """
    if retry_delay <= 0:
        return 0.0
    try:
        delay = retry_delay * (backoff ** (retry_number - 1))
    except OverflowError:
        delay = math.inf
    return min(delay, 86_400_000.0)


@dataclass(frozen=True)
class Page:
    """
    Which part of a listing to read: C{limit} rows from C{offset}, ordered
    by the API's C{sort_by} name in C{sort_order} (C{asc} or C{desc}).
    """
    limit: int
    offset: int = 0
    sort_by: str = "createdAt"
    sort_order: str = "desc"


@dataclass
class StepSpec:
    id: str
    name: str
    max_retries: int
    depends_on: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    timeout_seconds: float | None = None
    retry_delay_ms: int = 0
    retry_backoff: float = 2.0
    # The flow control fields (maxq.control.parse_step), absent when not given.
    control: dict = field(default_factory=dict)


@dataclass
class StageSpec:
    stage: str
    final: bool
    fail_fast: bool
    steps: list[StepSpec]
    max_parallel: int | None = None


_STAGE_KEYS = {"stage", "final", "failFast", "steps", "maxParallel"}
_STEP_KEYS = {
    "id",
    "name",
    "dependsOn",
    "maxRetries",
    "env",
    "timeoutSeconds",
    "retryDelayMs",
    "retryBackoff",
    *control.STEP_KEYS,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_stage_request(body: Any, max_steps: int, max_dependencies: int) -> StageSpec:
    """
    Check the shape of a C{POST /runs/{id}/steps} body and return the stage.
    Raises L{Invalid} with the first problem found.  Run-dependent checks
    (scripts, duplicates in the run, dependencies) are the engine's.
    """
    if not isinstance(body, dict):
        raise validation_error("body must be a JSON object")
    unknown = set(body) - _STAGE_KEYS
    if unknown:
        raise validation_error("unknown keys in stage", keys=sorted(unknown))
    stage = body.get("stage")
    if not valid_name(stage):
        raise validation_error(
            "stage is required and must match ^[A-Za-z0-9_-]+$", field="stage"
        )
    final = body.get("final")
    if not isinstance(final, bool):
        raise validation_error("final is required and must be a boolean", field="final")
    fail_fast = body.get("failFast", True)
    if not isinstance(fail_fast, bool):
        raise validation_error("failFast must be a boolean", field="failFast")
    raw_steps = body.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise validation_error("steps must be a non-empty array", field="steps")
    if len(raw_steps) > max_steps:
        raise Invalid(
            "TOO_MANY_STEPS",
            f"a stage may have at most {max_steps} steps",
            limit=max_steps,
            given=len(raw_steps),
        )
    steps = [_parse_step(raw, i) for i, raw in enumerate(raw_steps)]
    edges = sum(len(s.depends_on) for s in steps)
    if edges > max_dependencies:
        raise Invalid(
            "TOO_MANY_DEPENDENCIES",
            f"the steps of a stage may name at most {max_dependencies} dependencies "
            f"in all (dependsOn entries)",
            limit=max_dependencies,
            given=edges,
        )
    return StageSpec(stage=stage, final=final, fail_fast=fail_fast, steps=steps,
                     max_parallel=control.parse_max_parallel(body))


def _parse_step(raw: Any, index: int) -> StepSpec:
    where = f"steps[{index}]"
    if not isinstance(raw, dict):
        raise validation_error(f"{where} must be an object", index=index)
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        raise validation_error(
            f"{where} has unknown keys", index=index, keys=sorted(unknown)
        )
    step_id = raw.get("id")
    if not isinstance(step_id, str):
        raise validation_error(f"{where}.id is required (a string)", index=index)
    if not valid_name(step_id):
        raise Invalid(
            "INVALID_STEP_ID",
            f"step id {step_id!r} must match ^[A-Za-z0-9_-]+$ "
            f"(at most {MAX_NAME_LENGTH} characters)",
            stepId=step_id,
        )
    name = raw.get("name")
    if not isinstance(name, str):
        raise validation_error(f"{where}.name is required (a string)", stepId=step_id)
    if not valid_name(name):
        raise Invalid(
            "STEP_NOT_FOUND",
            f"no step script named {name!r}",
            stepId=step_id,
            name=name,
        )
    max_retries = raw.get("maxRetries")
    if not _is_int(max_retries) or max_retries < 0 or max_retries > 1000:
        raise validation_error(
            f"{where}.maxRetries is required: an integer from 0 to 1000",
            stepId=step_id,
        )
    depends_on = raw.get("dependsOn", [])
    if depends_on is None:
        depends_on = []
    if not isinstance(depends_on, list) or not all(
        isinstance(d, str) for d in depends_on
    ):
        raise validation_error(
            f"{where}.dependsOn must be an array of step ids", stepId=step_id
        )
    env = raw.get("env", {})
    if env is None:
        env = {}
    env = _check_env(env, step_id)
    timeout = raw.get("timeoutSeconds")
    if timeout is not None and (not _is_number(timeout) or not 0 < timeout <= 31_536_000):
        raise validation_error(
            f"{where}.timeoutSeconds must be a positive number", stepId=step_id
        )
    if timeout is None and STEP_TIMEOUT_ENV in env:
        try:
            timeout = float(env[STEP_TIMEOUT_ENV])
        except ValueError:
            timeout = -1
        if not 0 < timeout <= 31_536_000:
            raise Invalid(
                "INVALID_ENV",
                f"{STEP_TIMEOUT_ENV} must be a positive number of seconds",
                stepId=step_id,
                key=STEP_TIMEOUT_ENV,
            )
    delay = raw.get("retryDelayMs", 0)
    if not _is_int(delay) or not 0 <= delay <= 86_400_000:
        raise validation_error(
            f"{where}.retryDelayMs must be an integer from 0 to 86400000",
            stepId=step_id,
        )
    backoff = raw.get("retryBackoff", 2.0)
    if not _is_number(backoff) or not 1 <= backoff <= 100:
        raise validation_error(
            f"{where}.retryBackoff must be a number from 1 to 100", stepId=step_id
        )
    return StepSpec(
        id=step_id,
        name=name,
        max_retries=max_retries,
        depends_on=list(dict.fromkeys(depends_on)),
        env=env,
        timeout_seconds=float(timeout) if timeout is not None else None,
        retry_delay_ms=delay,
        retry_backoff=float(backoff),
        control=control.parse_step(raw, step_id, where, env_key_problem),
    )


def _check_env(env: Any, step_id: str) -> dict[str, str]:
    if not isinstance(env, dict):
        raise Invalid("INVALID_ENV", "env must be an object", stepId=step_id)
    if len(env) > MAX_ENV_ENTRIES:
        raise Invalid(
            "INVALID_ENV",
            f"env may have at most {MAX_ENV_ENTRIES} entries",
            stepId=step_id,
        )
    total = sum(len(k.encode("utf-8", "surrogatepass")) + 2 for k in env) + sum(
        len(v.encode("utf-8", "surrogatepass")) for v in env.values() if isinstance(v, str)
    )
    if total > MAX_ENV_TOTAL_BYTES:
        raise Invalid(
            "INVALID_ENV",
            f"env is {total} bytes in all; the limit is {MAX_ENV_TOTAL_BYTES}",
            stepId=step_id,
            limit=MAX_ENV_TOTAL_BYTES,
        )
    for key, value in env.items():
        problem = env_key_problem(key)
        if problem:
            raise Invalid(
                "INVALID_ENV", f"env key {key!r} {problem}", stepId=step_id, key=key
            )
        if not isinstance(value, str):
            raise Invalid(
                "INVALID_ENV",
                f"env value of {key!r} must be a string",
                stepId=step_id,
                key=key,
            )
        if "\0" in value or len(value.encode()) > MAX_ENV_VALUE_BYTES:
            raise Invalid(
                "INVALID_ENV",
                f"env value of {key!r} must be under {MAX_ENV_VALUE_BYTES} bytes "
                "without NUL characters",
                stepId=step_id,
                key=key,
            )
    return dict(env)


def check_dag(steps: list[StepSpec], earlier_completed: set[str]) -> None:
    """
    Every dependency names a step of this stage or a completed step of an
    earlier stage, and the stage's own dependencies have no cycle.
    """
    ids = {s.id for s in steps}
    for step in steps:
        for dep in step.depends_on:
            if dep == step.id:
                raise Invalid(
                    "DEPENDENCY_CYCLE",
                    f"step {step.id!r} depends on itself",
                    cycle=[step.id, step.id],
                )
            if dep not in ids and dep not in earlier_completed:
                raise Invalid(
                    "UNKNOWN_DEPENDENCY",
                    f"step {step.id!r} depends on {dep!r}, which is neither in this "
                    "stage nor a completed step of an earlier stage",
                    stepId=step.id,
                    dependency=dep,
                )
    cycle = find_cycle({s.id: [d for d in s.depends_on if d in ids] for s in steps})
    if cycle:
        raise Invalid(
            "DEPENDENCY_CYCLE",
            "dependencies form a cycle: " + " -> ".join(cycle),
            cycle=cycle,
        )


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """
    A cycle in C{graph} (node -> nodes it depends on) as a closed path, or
    None.  Iterative, so a 10,000-step chain cannot exhaust the stack.
    """
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    for root in graph:
        if color[root] != WHITE:
            continue
        stack = [(root, iter(graph[root]))]
        color[root] = GREY
        path = [root]
        while stack:
            node, children = stack[-1]
            advanced = False
            for child in children:
                if color[child] == GREY:
                    return path[path.index(child):] + [child]
                if color[child] == WHITE:
                    color[child] = GREY
                    stack.append((child, iter(graph[child])))
                    path.append(child)
                    advanced = True
                    break
            if not advanced:
                color[node] = BLACK
                stack.pop()
                path.pop()
    return None
