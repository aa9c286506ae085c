"""
The flow-control commands of C{maxq} against a real server (SPEC §6):
C{maxq pools}, C{maxq pool set NAME SLOTS}, C{maxq run --priority}, and the
wait reasons C{maxq show} prints.
"""

from __future__ import annotations

import json

from tests.cli_support import run_cli

WAITING_FLOW = """
if [ -z "$MAXQ_COMPLETED_STAGE" ]; then
  . "$MAXQ_LIB"
  maxq_schedule work --final "$(maxq_step gpu-step ok requires=gpu)" >/dev/null
fi
"""


async def cli(server, *args):
    return await run_cli(server.reactor, *args, url=server.url)


async def test_cli_pools_and_pool_set(maxq, tmp_path):
    server = await maxq.start(env={"MAXQ_POOLS": "db=2"})
    result = await cli(server, "pools")
    assert result.code == 0, result
    assert result.out.split("\n")[0].split() == ["POOL", "SLOTS", "USED", "WAITING"]
    assert result.out.split("\n")[1].split() == ["db", "2", "0", "0"]
    result = await cli(server, "pool", "set", "gpu", "1")
    assert result.code == 0, result
    assert result.out.strip() == "pool gpu: 1 slots (0 used, 0 waiting)"
    result = await cli(server, "--json", "pools")
    assert json.loads(result.out) == {"pools": [
        {"name": "db", "slots": 2, "used": 0, "waiting": 0},
        {"name": "gpu", "slots": 1, "used": 0, "waiting": 0}]}
    result = await cli(server, "pool", "set", "gpu", "-1")
    assert result.code != 0 and "zero or more" in result.err
    result = await cli(server, "pool", "set", "bad name", "1")
    assert result.code == 2 and "(VALIDATION_ERROR)" in result.err


async def test_cli_show_prints_why_a_step_waits(maxq, tmp_path):
    server = await maxq.start()
    server.flows.add("gpu", WAITING_FLOW, steps={"ok": "exit 0\n"})
    result = await cli(server, "run", "gpu", "--priority", "5")
    assert result.code == 0, result
    run_id = result.out.split()[0]
    await server.wait_for(
        lambda: _waiting(server, run_id), what="the step's wait reason")
    result = await cli(server, "show", run_id)
    assert result.code == 0, result
    assert "priority" in result.out and " 5" in result.out
    line = next(x for x in result.out.splitlines() if x.startswith("gpu-step"))
    assert "no_worker" in line and "requires=gpu" in line
    await server.post(f"/runs/{run_id}/abort")


async def _waiting(server, run_id):
    _, step = await server.get(f"/runs/{run_id}/steps/gpu-step")
    return step.get("waitReason")
