"""
Helpers for the execution tests (C{test_exec_*.py}): a generic flow.sh driven
by JSON "plan" files, step scripts that record when they ran, and readers for
what the scripts recorded.

A scenario lives in an output directory C{OUT} outside the flows root, whose
absolute path is baked into every script.  The flow script picks a key from
its environment:

    start                    first call (MAXQ_COMPLETED_STAGE empty)
    done-<stage>             after a completed stage
    failed-<stage>           after a failed stage (MAXQ_FAILED_STAGE set)

and posts every plan file C{OUT/plan/<key>.<n>.json} (in order) with curl.
Each invocation appends a "start" and (from an EXIT trap) an "end" line to
C{OUT/flow.log}.

Step scripts (unless written raw) append C{"<attempt> <ns>"} to
C{OUT/<step id>.start} first and, through C{finish [code]}, to
C{OUT/<step id>.end} before exiting.  A body that falls off its end calls
C{finish 0}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.internet import task

FLOW_TEMPLATE = r"""
OUT='@OUT@'
MAXQ_AUTH=()
if [ -n "${MAXQ_TOKEN:-}" ]; then MAXQ_AUTH=(-H "Authorization: Bearer $MAXQ_TOKEN"); fi
if [ -n "${MAXQ_FAILED_STAGE:-}" ]; then key="failed-$MAXQ_FAILED_STAGE"
elif [ -n "${MAXQ_COMPLETED_STAGE:-}" ]; then key="done-$MAXQ_COMPLETED_STAGE"
else key=start; fi
echo "start $(date +%s%N) $key $$ completed=${MAXQ_COMPLETED_STAGE-<unset>} failed=${MAXQ_FAILED_STAGE-<unset>}" >> "$OUT/flow.log"
trap 'echo "end $(date +%s%N) $key $$" >> "$OUT/flow.log"' EXIT
schedule() {
  if ! curl -sS --fail-with-body -H 'Content-Type: application/json' "${MAXQ_AUTH[@]}" \
       -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d @"$1" >> "$OUT/curl.log" 2>&1; then
    echo "scheduling $1 failed:" >&2
    cat "$OUT/curl.log" >&2
    exit 90
  fi
  echo >> "$OUT/curl.log"
}
@PRE@
for plan in "$OUT/plan/$key".*.json; do
  if [ -e "$plan" ]; then schedule "$plan"; fi
done
@EXTRA@
"""

STEP_PRELUDE = r"""
OUT='@OUT@'
echo "$MAXQ_ATTEMPT $(date +%s%N)" >> "$OUT/$MAXQ_STEP_ID.start"
finish() {
  echo "$MAXQ_ATTEMPT $(date +%s%N)" >> "$OUT/$MAXQ_STEP_ID.end"
  exit "${1:-0}"
}
"""

# A shell function steps may use to post fields about themselves.
POST_FIELDS = r"""
post_fields() {
  local auth=()
  if [ -n "${MAXQ_TOKEN:-}" ]; then auth=(-H "Authorization: Bearer $MAXQ_TOKEN"); fi
  curl -sS --fail-with-body -H 'Content-Type: application/json' "${auth[@]}" \
    -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps/$MAXQ_STEP_ID/fields" -d "$1" \
    >> "$OUT/$MAXQ_STEP_ID.fields.log" 2>&1
}
"""


def step(id: str, name: str | None = None, max_retries: int = 0, **extra) -> dict:
    """
    One step of a stage body: C{name} defaults to C{id}; C{extra} uses the
    API's own keys (C{dependsOn}, C{env}, C{timeoutSeconds}, ...).
    """
    return {"id": id, "name": name or id, "maxRetries": max_retries, **extra}


def stage(name: str, steps: list[dict], final: bool = False, **extra) -> dict:
    return {"stage": name, "final": final, "steps": steps, **extra}


class Scenario:
    """
    One flow plus its output directory.
    """

    def __init__(self, server, flow: str = "f"):
        self.server = server
        self.flow = flow
        self.flow_dir = Path(server.flows.root) / flow
        self.out = Path(server.flows.root).resolve().parent / f"out-{server.flows.root.name}-{flow}"
        (self.out / "plan").mkdir(parents=True, exist_ok=True)

    # -- writing ---------------------------------------------------------

    def bake(self, text: str) -> str:
        return text.replace("@OUT@", str(self.out))

    def setup(self, plan: dict[str, list[dict] | dict], steps: dict[str, str] | None = None,
              extra: str = "", raw_steps: dict[str, str] | None = None,
              pre: str = "") -> "Scenario":
        """
        Write the flow, its plan files and its steps.  C{plan} maps a key
        (C{start}, C{done-<stage>}, C{failed-<stage>}) to one stage body or
        a list of them.  C{steps} bodies get the recording prelude;
        C{raw_steps} bodies are written as they are (with C{@OUT@} baked).
        C{pre} is shell run by the flow before it posts its plan, C{extra}
        after (both see C{$key} and C{$OUT}).
        """
        for key, stages in plan.items():
            if isinstance(stages, dict):
                stages = [stages]
            for n, body in enumerate(stages):
                (self.out / "plan" / f"{key}.{n:03d}.json").write_text(json.dumps(body))
        flow_sh = (self.bake(FLOW_TEMPLATE)
                   .replace("@PRE@", self.bake(_dedent(pre)))
                   .replace("@EXTRA@", self.bake(_dedent(extra))))
        scripts = {}
        for name, body in (steps or {}).items():
            scripts[name] = self.bake(STEP_PRELUDE + POST_FIELDS + _dedent(body) + "\nfinish 0\n")
        for name, body in (raw_steps or {}).items():
            scripts[name] = self.bake(_dedent(body))
        self.server.flows.add(self.flow, flow_sh, steps=scripts)
        return self

    def touch(self, name: str) -> None:
        (self.out / name).write_text("")

    # -- driving ---------------------------------------------------------

    async def trigger(self) -> str:
        run = await self.server.trigger(self.flow)
        return run["id"]

    async def finish(self, run_id: str, statuses=("completed", "failed"),
                     timeout: float = 20.0) -> dict:
        run = await self.server.wait_run(run_id, statuses, timeout=timeout)
        return run

    async def run(self, statuses=("completed", "failed"), timeout: float = 20.0) -> dict:
        run_id = await self.trigger()
        return await self.finish(run_id, statuses, timeout)

    async def step(self, run_id: str, step_id: str) -> dict:
        status, body = await self.server.get(f"/runs/{run_id}/steps/{step_id}")
        assert status == 200, (status, body)
        return body

    async def steps_by_id(self, run_id: str) -> dict[str, dict]:
        result = {}
        for summary in await self.server.steps(run_id):
            result[summary["id"]] = await self.step(run_id, summary["id"])
        return result

    async def wait_file(self, name: str, timeout: float = 15.0) -> Path:
        path = self.out / name

        async def check():
            return path.exists() and path.stat().st_size > 0

        await self.server.wait_for(check, timeout, what=f"file {path}")
        return path

    # -- reading ---------------------------------------------------------

    def marks(self, step_id: str, kind: str = "start") -> list[tuple[int, int]]:
        """
        C{[(attempt, ns), ...]} recorded by the step prelude.
        """
        path = self.out / f"{step_id}.{kind}"
        if not path.exists():
            return []
        result = []
        for line in path.read_text().splitlines():
            attempt, ns = line.split()
            result.append((int(attempt), int(ns)))
        return result

    def starts(self, step_id: str) -> int:
        return len(self.marks(step_id, "start"))

    def interval(self, step_id: str) -> tuple[int, int]:
        """
        (start ns, end ns) of the step's single recorded execution.
        """
        starts = self.marks(step_id, "start")
        ends = self.marks(step_id, "end")
        assert len(starts) == 1 and len(ends) == 1, (step_id, starts, ends)
        return starts[0][1], ends[0][1]

    def flow_log(self) -> list[dict]:
        """
        The flow invocations: C{[{"key", "start", "end", "pid",
        "completed", "failed"}]} in start order.
        """
        path = self.out / "flow.log"
        if not path.exists():
            return []
        order: list[dict] = []
        for line in path.read_text().splitlines():
            parts = line.split(" ")
            kind, ns, key, pid = parts[0], int(parts[1]), parts[2], parts[3]
            if kind == "start":
                order.append({
                    "key": key, "start": ns, "end": None, "pid": pid,
                    "completed": parts[4].split("=", 1)[1],
                    "failed": parts[5].split("=", 1)[1],
                })
            else:
                for call in reversed(order):
                    if call["pid"] == pid and call["end"] is None:
                        call["end"] = ns
                        break
        return order

    def flow_keys(self) -> list[str]:
        return [c["key"] for c in self.flow_log()]

    def read(self, name: str) -> str:
        return (self.out / name).read_text()


def _dedent(body: str) -> str:
    import textwrap

    return textwrap.dedent(body).strip("\n") + "\n"


async def settle(reactor, seconds: float = 0.4) -> None:
    """
    Let time pass before asserting that something did NOT happen (a call
    that should never come, a step that must not be claimed).  Never used
    to wait for a state.
    """
    await task.deferLater(reactor, seconds, lambda: None)


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    """
    The largest number of intervals open at one instant.
    """
    events = []
    for start, end in intervals:
        events.append((start, 1))
        events.append((end, -1))
    # Ends sort before starts at the same instant: touching is not overlapping.
    events.sort(key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


def read_env_dump(path: Path) -> dict[str, str]:
    """
    Parse C{env -0} output.
    """
    result = {}
    for item in path.read_bytes().split(b"\0"):
        if not item:
            continue
        key, _, value = item.decode().partition("=")
        result[key] = value
    return result


def children_of(pid: int) -> list[tuple[int, str]]:
    """
    C{[(pid, state)]} of every process whose parent is C{pid}.
    """
    result = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid = rest[0], int(rest[1])
        if ppid == pid:
            result.append((int(entry), state))
    return result


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def timed(seconds: float = 30.0):
    """
    Decorate an C{async def} test: run it as a Deferred that fails with
    C{TimeoutError} after C{seconds} (pytest-twisted has no timeouts).
    """
    import functools

    from twisted.internet import defer

    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            from twisted.internet import reactor

            return defer.ensureDeferred(f(*args, **kwargs)).addTimeout(seconds, reactor)

        return wrapper

    return decorate
