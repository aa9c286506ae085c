"""
Helpers shared by the C{test_api_*} modules (this module holds no tests).

Flows here are bash scripts that talk to the server with plain curl, so they
do not depend on the helper library.  A "held" run is one whose first stage
has a step that waits for a file the test creates: while it waits, the run is
C{running} and the test can schedule stages, post fields, pause, abort...
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

# A curl wrapper for scripts: JSON, fails on HTTP errors (printing the body),
# and sends the run token when auth is on.
API_SH = """\
set -e
api() {
  curl -sS --fail-with-body -H 'Content-Type: application/json' \\
    ${MAXQ_TOKEN:+-H "Authorization: Bearer $MAXQ_TOKEN"} "$@"
}
post_stage() {
  api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d "$1"
  echo
}
"""

OK_SH = "exit 0\n"
FAIL_SH = "echo failing >&2\nexit 1\n"

RUN_KEYS = {
    "id", "flowName", "status", "input", "output", "error", "metadata", "name",
    "description", "stdout", "stderr", "terminationReason", "createdAt",
    "startedAt", "completedAt", "durationMs",
}
STEP_KEYS = {
    "id", "runId", "stage", "name", "status", "dependsOn", "retryCount",
    "maxRetries", "env", "fields", "error", "exitCode", "createdAt", "queuedAt",
    "startedAt", "completedAt", "durationMs", "stdout", "stderr", "workerId",
    "terminationReason",
}
STAGE_KEYS = {"name", "status", "final", "createdAt", "completedAt"}


def now_ms() -> int:
    return int(time.time() * 1000)


def new_uuid() -> str:
    return str(uuid.uuid4())


def sh_quote_json(value) -> str:
    return shlex.quote(json.dumps(value))


def stage(name: str, steps: list[dict], final: bool = False, **extra) -> dict:
    return {"stage": name, "final": final, "steps": steps, **extra}


def step(step_id: str, name: str = "ok", max_retries: int = 0, **extra) -> dict:
    return {"id": step_id, "name": name, "maxRetries": max_retries, **extra}


def staged_flow_sh(plan: dict[str, dict], on_failed: dict[str, dict] | None = None,
                   extra: str = "") -> str:
    """
    A flow.sh that schedules C{plan[""]} on its first call and
    C{plan[<stage>]} when called back with C{MAXQ_COMPLETED_STAGE=<stage>};
    after a failed stage it schedules C{on_failed[<stage>]} if given, else
    nothing (so the run fails).  Any other callback schedules nothing.
    """
    lines = [API_SH, extra]
    lines.append('if [ -n "${MAXQ_FAILED_STAGE:-}" ]; then')
    lines.append('  case "$MAXQ_FAILED_STAGE" in')
    for name, body in (on_failed or {}).items():
        lines.append(f"    {name}) post_stage {sh_quote_json(body)} ;;")
    lines.append("  esac")
    lines.append("  exit 0")
    lines.append("fi")
    lines.append('case "${MAXQ_COMPLETED_STAGE:-}" in')
    for name, body in plan.items():
        label = '""' if name == "" else name
        lines.append(f"  {label}) post_stage {sh_quote_json(body)} ;;")
    lines.append("esac")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def state_dir(server, flow: str) -> Path:
    """
    A scratch directory for one flow's marker files (outside the flows root).
    """
    root = server.flows.root
    path = root.parent / f"{root.name}-{flow}-state"
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_sh(state: Path) -> str:
    """
    A step that records its pid and attempt, then waits for C{state/release}.
    """
    return f"""\
echo $$ >> {shlex.quote(str(state / 'pids'))}
echo "$MAXQ_ATTEMPT" >> {shlex.quote(str(state / 'attempts'))}
while [ ! -f {shlex.quote(str(state / 'release'))} ]; do sleep 0.02; done
echo released
"""


def flaky_sh(state: Path) -> str:
    """
    A step that fails until C{state/fixed} exists; counts its attempts.
    """
    return f"""\
echo x >> {shlex.quote(str(state / 'flaky-attempts'))}
[ -f {shlex.quote(str(state / 'fixed'))} ] || {{ echo not-fixed >&2; exit 1; }}
echo fixed
"""


def count_sh(state: Path) -> str:
    return f"echo \"$MAXQ_STEP_ID\" >> {shlex.quote(str(state / 'count'))}\n"


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def add_noop(server, name: str = "noop", body: str = "exit 0\n") -> None:
    server.flows.add(name, body)


@dataclass
class Held:
    server: object
    flow: str
    run_id: str
    state: Path

    def release(self) -> None:
        (self.state / "release").touch()

    def pids(self) -> list[int]:
        return [int(p) for p in read_lines(self.state / "pids")]

    def attempts(self) -> list[str]:
        return read_lines(self.state / "attempts")

    async def finish(self) -> dict:
        """
        Release the waiting step and wait for the run to end.
        """
        self.release()
        return await self.server.wait_run(self.run_id)


def add_held_flow(server, flow: str = "held") -> Path:
    """
    A flow whose first call schedules stage C{hold} (not final) with one step
    C{wait} that waits for the release file; every later call schedules
    nothing.  Step scripts available: wait, ok, fail, flaky, count.
    """
    state = state_dir(server, flow)
    flow_sh = staged_flow_sh({"": stage("hold", [step("wait", "wait")])})
    server.flows.add(flow, flow_sh, steps={
        "wait": wait_sh(state),
        "ok": OK_SH,
        "fail": FAIL_SH,
        "flaky": flaky_sh(state),
        "count": count_sh(state),
    })
    return state


async def start_held(server, flow: str = "held") -> Held:
    """
    Trigger a held run and wait until its C{wait} step runs.
    """
    state = add_held_flow(server, flow)
    run = await server.trigger(flow)
    held = Held(server, flow, run["id"], state)
    await server.wait_step(run["id"], "wait", {"running"})
    await server.wait_for(lambda: defer.succeed(held.attempts()),
                          what="wait step started")
    return held


def assert_error(response, status: int, code: str | set[str]) -> dict:
    """
    C{response} is C{(status, body)}: check the status and that the body is
    exactly the JSON error shape with the given code.
    """
    got_status, body = response
    codes = {code} if isinstance(code, str) else code
    assert got_status == status, response
    assert isinstance(body, dict), f"error body is not JSON: {response!r}"
    assert set(body) == {"error", "code", "details"}, body
    assert body["code"] in codes, response
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["details"], dict), body
    return body


def assert_json_error(response, statuses: tuple[int, ...]) -> dict:
    """
    C{response} is one of C{statuses} with the JSON error shape, whatever
    its code.
    """
    got_status, body = response
    assert got_status in statuses, response
    assert isinstance(body, dict), f"error body is not JSON: {response!r}"
    return assert_error(response, got_status, str(body.get("code")))


async def snapshot(server, run_id: str):
    """
    What a rejected request must not change: the run's steps and stages.
    """
    steps = await server.steps(run_id)
    status, run = await server.get(f"/runs/{run_id}")
    assert status == 200, (status, run)
    return (
        sorted((s["id"], s["name"], s["stage"]) for s in steps),
        sorted(s["name"] for s in run["stages"]),
    )


async def settle(reactor, seconds: float = 0.0):
    await task.deferLater(reactor, seconds, lambda: None)


class _Collect(Protocol):
    def __init__(self, payload: bytes):
        self.payload = payload
        self.data = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(self.data)


async def raw_http(reactor, port: int, payload: bytes, timeout: float = 10.0):
    """
    Send raw bytes to the server and read until it closes the connection
    (send C{Connection: close}).  Returns C{(status, headers, body bytes)}.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    proto = _Collect(payload)
    await connectProtocol(endpoint, proto)
    proto.done.addTimeout(timeout, reactor)
    data = await proto.done
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        decoded = b""
        rest = body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            decoded += rest[:size]
            rest = rest[size + 2:]
        body = decoded
    return status, headers, body
