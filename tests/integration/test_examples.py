"""
The shipped examples run to completion against a real server, as they are,
with and without an API key (their scripts use the shell helpers, which
send MAXQ_TOKEN).
"""

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("api_key", [None, "example-key"], ids=["open", "api-key"])
async def test_examples_complete(maxq, api_key):
    env = {"MAXQ_API_KEY": api_key} if api_key else {}
    server = await maxq.start(flows_root=EXAMPLES, env=env, max_concurrent_steps=8)
    status, listing = await server.get("/flows")
    assert status == 200
    names = {f["name"] for f in listing["flows"]}
    assert {"hello_world", "market_analysis", "failure_handling", "nightly_report"} <= names

    runs = {name: await server.trigger(name, {}) for name in sorted(names)}
    for name, run in runs.items():
        final = await server.wait_run(run["id"], timeout=30)
        assert final["status"] == "completed", (name, final["error"], final["stderr"])

    hello = await server.wait_run(runs["hello_world"]["id"])
    assert hello["output"] == {"greeting": "Hello, world!", "farewell": "Goodbye, world!"}
    assert [s["name"] for s in hello["stages"]] == ["greeting", "farewell"]

    market = runs["market_analysis"]["id"]
    analyzers = await server.steps(market, name="analyze")
    assert len(analyzers) == 4 and all(s["status"] == "completed" for s in analyzers)
    assert len({tuple(sorted(s["env"].items())) for s in analyzers}) == 4
    (report,) = await server.steps(market, name="report")
    assert report["fields"], "the report step posts what it read upstream"

    failing = runs["failure_handling"]["id"]
    (flaky,) = await server.steps(failing, name="flaky")
    assert flaky["status"] == "completed" and flaky["retryCount"] >= 1
    status, run = await server.get(f"/runs/{failing}")
    assert any(s["status"] == "failed" for s in run["stages"])
    assert run["stages"][-1]["status"] == "completed"

    nightly = await server.wait_run(runs["nightly_report"]["id"])
    assert nightly["output"]["trigger"] == "api"
    status, entry = await server.get("/flows/nightly_report/schedule")
    assert status == 200 and entry["timezone"] == "Europe/Berlin"
    # A backfill of one morning reports on that morning (06:30 Berlin).
    status, backfill = await server.post("/flows/nightly_report/backfills", {
        "from": 1_796_275_800_000 - 1, "to": 1_796_275_800_000})
    assert status == 201 and len(backfill["runs"]) == 1, backfill
    run = await server.wait_run(backfill["runs"][0]["id"], timeout=30)
    assert run["status"] == "completed", run
    assert run["output"] == {"day": "2026-12-03", "trigger": "backfill"}
