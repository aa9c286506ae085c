"""
What the scheduler starts: a claimed step or flow call, as a L{Launch}.

A launch knows its entry in the scheduler's running table
(C{SchedulerService.steps} or C{.flow_calls}), its script, the environment
the script gets, and how the engine records its result or puts its work
back after a shutdown; the scheduler starts, finishes and records every
kind the same way.
"""

from __future__ import annotations

from pathlib import Path

from maxq.flows import FlowsRoot
from maxq.process import ProcessResult
from maxq.schedule_times import iso_utc
from maxq.tokens import Credentials

LIB_PATH = Path(__file__).resolve().parent / "lib" / "maxq.sh"


class Launch:
    """
    One claimed row (C{row}) to start, whose handle is held in C{running}
    under L{key} as C{(ident, handle)} while its process runs.
    """

    kind: str
    # Seconds the process may run (None: no limit).
    timeout_s: float | None = None

    def __init__(self, row: dict, running: dict):
        self.row = row
        self.running = running

    @property
    def key(self):
        raise NotImplementedError

    @property
    def ident(self):
        """
        What identifies this claim beside its key (the step's claim number,
        the flow call's id).
        """
        raise NotImplementedError

    @property
    def label(self) -> str:
        return f"{self.kind} {self.row['id']}"

    def script(self, flows: FlowsRoot) -> Path | None:
        raise NotImplementedError

    def missing(self) -> str:
        """
        The error of a script that is missing or not executable.
        """
        raise NotImplementedError

    def env(self, base_env: dict[str, str], api_url: str,
            credentials: Credentials) -> dict[str, str]:
        raise NotImplementedError

    def not_started(self, now_ms: int) -> ProcessResult:
        """
        The result when L{script} gives nothing to start.
        """
        return not_started(now_ms, self.missing())

    async def finish(self, engine, result: ProcessResult):
        raise NotImplementedError

    async def requeue(self, engine):
        raise NotImplementedError

    def hold(self, handle) -> None:
        self.running[self.key] = (self.ident, handle)

    def release(self, handle) -> None:
        """
        Forget C{handle}, unless the entry is already another handle's.
        """
        entry = self.running.get(self.key)
        if entry is not None and entry[1] is handle:
            del self.running[self.key]


class StepLaunch(Launch):
    kind = "step"

    @property
    def key(self) -> tuple[str, str]:
        return (self.row["run_id"], self.row["id"])

    @property
    def ident(self) -> int:
        return self.row["claim_no"]

    @property
    def timeout_s(self) -> float | None:
        return self.row["timeout_seconds"]

    def script(self, flows: FlowsRoot) -> Path | None:
        if self.row.get("missing_input"):
            return None
        return flows.step_script(self.row["flow_name"], self.row["name"])

    def missing(self) -> str:
        return (f"step script steps/{self.row['name']}/step.sh is missing "
                "or not executable\n")

    def not_started(self, now_ms: int) -> ProcessResult:
        name = self.row.get("missing_input")
        if name is None:
            return super().not_started(now_ms)
        # One of its inputs has no value (SPEC §6): the attempt fails unstarted.
        return ProcessResult(exit_code=None, signal=None, stdout="",
                             stderr=f"input {name} has no value\n",
                             termination_reason=None, started_ms=now_ms,
                             ended_ms=now_ms,
                             error={"reason": "missing_input", "input": name})

    def env(self, base_env: dict[str, str], api_url: str,
            credentials: Credentials) -> dict[str, str]:
        step = self.row
        env = dict(base_env)
        env.update(step["env"] or {})
        env.update(step.get("input_env") or {})
        env.update(
            MAXQ_RUN_ID=step["run_id"],
            MAXQ_STEP_ID=step["id"],
            MAXQ_STEP_NAME=step["name"],
            MAXQ_FLOW_NAME=step["flow_name"],
            MAXQ_STAGE=step["stage"],
            MAXQ_API=api_url,
            MAXQ_ATTEMPT=str(step["retry_count"] + 1),
            MAXQ_LIB=str(LIB_PATH),
        )
        if credentials.enabled:
            env["MAXQ_TOKEN"] = credentials.script_token(step["run_id"], step["id"])
        return env

    def _claim(self) -> tuple[str, str, int]:
        return (self.row["run_id"], self.row["id"], self.row["claim_no"])

    async def finish(self, engine, result: ProcessResult):
        outcome = await engine.step_finished(*self._claim(), result)
        if engine.hooks is not None:
            # Counted here, where the flow and the process's times are known,
            # so the step path reads nothing more.
            engine.hooks.step_finished(self.row["flow_name"], result)
        return outcome

    async def requeue(self, engine):
        return await engine.requeue_step(*self._claim())


class FlowCallLaunch(Launch):
    kind = "flow call"

    @property
    def key(self) -> str:
        return self.row["run_id"]

    @property
    def ident(self) -> int:
        return self.row["id"]

    def script(self, flows: FlowsRoot) -> Path | None:
        return flows.flow_script(self.row["flow_name"])

    def missing(self) -> str:
        return "flow.sh is missing or not executable\n"

    def env(self, base_env: dict[str, str], api_url: str,
            credentials: Credentials) -> dict[str, str]:
        call = self.row
        env = dict(base_env)
        env.update(
            MAXQ_RUN_ID=call["run_id"],
            MAXQ_FLOW_NAME=call["flow_name"],
            MAXQ_API=api_url,
            MAXQ_COMPLETED_STAGE=call["completed_stage"] or "",
            MAXQ_LIB=str(LIB_PATH),
        )
        if call["failed_stage"]:
            env["MAXQ_FAILED_STAGE"] = call["failed_stage"]
        # How the run was made, and the fire time of a scheduled one.
        env["MAXQ_TRIGGER"] = call.get("trigger") or "api"
        if call.get("scheduled_at") is not None:
            env["MAXQ_SCHEDULED_AT"] = iso_utc(call["scheduled_at"])
        if credentials.enabled:
            env["MAXQ_TOKEN"] = credentials.script_token(call["run_id"])
        return env

    async def finish(self, engine, result: ProcessResult):
        return await engine.flow_call_finished(self.row["id"], result)

    async def requeue(self, engine):
        return await engine.requeue_flow_call(self.row["id"])


def not_started(now_ms: int, message: str) -> ProcessResult:
    """
    The result of a script that could not be started: exit status 127, as a
    shell reports a command it cannot run.
    """
    return ProcessResult(exit_code=127, signal=None, stdout="", stderr=message,
                         termination_reason=None, started_ms=now_ms, ended_ms=now_ms)
