"""
The watching commands against a real server, as real subprocesses:
C{maxq run --wait --follow}, C{maxq events}, C{maxq output}, C{maxq search}.
"""

from __future__ import annotations

import json

from tests.cli_support import run_cli

from .api_support import stage, staged_flow_sh, step


async def cli(server, *args):
    return await run_cli(server.reactor, *args, url=server.url)


async def test_run_follow_events_output_search(maxq):
    server = await maxq.start()
    server.flows.add("talk", staged_flow_sh({"": stage("s", [step("hi", "hi")],
                                                       final=True)}),
                     steps={"hi": "echo 'greetings earthling'\nsleep 0.3\necho 'bye now'\n"})
    result = await cli(server, "run", "talk", "--wait", "--follow")
    assert result.code == 0, result
    lines = result.out.splitlines()
    run_id = lines[0]
    assert "step hi: running" in lines and "step hi: completed" in lines
    assert "[hi] greetings earthling" in lines and "[hi] bye now" in lines
    assert lines[-1] == "completed"

    result = await cli(server, "events", "--run", run_id, "--json")
    assert result.code == 0, result
    events = json.loads(result.out)["events"]
    assert events[0]["type"] == "run" and events[0]["status"] == "pending"

    result = await cli(server, "events", "--run", run_id, "--type", "step")
    assert result.code == 0 and "completed" in result.out

    result = await cli(server, "output", run_id, "hi")
    assert result.code == 0 and result.out == "greetings earthling\nbye now\n", result

    result = await cli(server, "search", "earthling")
    assert result.code == 0 and "greetings earthling" in result.out, result
