"""
SPEC §3: GET /health, GET /flows, GET /flows/{flow}, and flow names that try
to leave the flows root.
"""

from __future__ import annotations

from .api_support import (
    assert_error,
    now_ms,
    read_lines,
    state_dir,
)

ALPHA_YAML = """\
title: Alpha flow
description: Does alpha things
schedule: "*/5 * * * *"
"""


def add_flows(server):
    server.flows.add("alpha", "exit 0\n", steps={"b": "exit 0\n", "a": "exit 0\n"},
                     flow_yaml=ALPHA_YAML)
    # A step directory whose step.sh is not executable is no step.
    server.flows.write_script(server.flows.root / "alpha" / "steps" / "c" / "step.sh",
                              "exit 0\n", executable=False)
    server.flows.add("beta", "exit 0\n")
    # Not flows: flow.sh not executable, and no flow.sh at all.
    server.flows.write_script(server.flows.root / "broken" / "flow.sh", "exit 0\n",
                              executable=False)
    (server.flows.root / "empty" / "steps" / "x").mkdir(parents=True)


async def test_health_reports_healthy(maxq):
    server = await maxq.start()
    status, body = await server.get("/health", prefix=False)
    assert status == 200, body
    assert body["status"] == "healthy"
    assert body["services"]["database"] == "healthy"
    assert "timestamp" in body and body["timestamp"]
    if isinstance(body["timestamp"], int):
        assert abs(body["timestamp"] - now_ms()) < 60_000


async def test_list_flows(maxq):
    server = await maxq.start()
    add_flows(server)
    status, body = await server.get("/flows")
    assert status == 200, body
    flows = {f["name"]: f for f in body["flows"]}
    assert set(flows) == {"alpha", "beta"}, body
    alpha = flows["alpha"]
    assert alpha["steps"] == ["a", "b"]
    assert alpha["title"] == "Alpha flow"
    assert alpha["description"] == "Does alpha things"
    assert alpha["schedule"] == "*/5 * * * *"
    assert isinstance(alpha["path"], str) and "alpha" in alpha["path"]
    beta = flows["beta"]
    assert beta["steps"] == []
    assert beta.get("title") is None
    assert beta.get("description") is None


async def test_list_flows_empty_root(maxq):
    server = await maxq.start()
    status, body = await server.get("/flows")
    assert (status, body) == (200, {"flows": []})


async def test_get_flow(maxq):
    server = await maxq.start()
    add_flows(server)
    status, alpha = await server.get("/flows/alpha")
    assert status == 200, alpha
    assert alpha["name"] == "alpha"
    assert alpha["steps"] == ["a", "b"]
    assert alpha["title"] == "Alpha flow"
    assert "alpha" in alpha["path"]
    status, listed = await server.get("/flows")
    assert alpha == next(f for f in listed["flows"] if f["name"] == "alpha")


async def test_get_flow_unknown(maxq):
    server = await maxq.start()
    add_flows(server)
    for name in ("nope", "broken", "empty", "a.b", "..%2Fetc", "..%2F..%2Fetc",
                 "%2E%2E", "alpha%2Fsteps", "%00", "alpha%00"):
        assert_error(await server.get(f"/flows/{name}"), 404, "FLOW_NOT_FOUND")


async def test_flow_outside_the_root_is_never_run(maxq):
    server = await maxq.start()
    add_flows(server)
    # An executable flow.sh right next to the flows root.
    marker = state_dir(server, "outside") / "ran"
    outside = server.flows.root.parent / "outside"
    server.flows.write_script(outside / "flow.sh", f"echo ran >> '{marker}'\n")
    name = "..%2Foutside"
    assert_error(await server.get(f"/flows/{name}"), 404, "FLOW_NOT_FOUND")
    assert_error(await server.post(f"/flows/{name}/runs", {}), 404, "FLOW_NOT_FOUND")
    assert_error(await server.post("/runs", {"flowName": "../outside"}), 404,
                 "FLOW_NOT_FOUND")
    assert_error(await server.post("/runs", {"flowName": str(outside)}), 404,
                 "FLOW_NOT_FOUND")
    status, runs = await server.get("/runs")
    assert status == 200 and runs["pagination"]["total"] == 0, runs
    assert read_lines(marker) == []


async def test_flows_are_discovered_without_restart(maxq):
    server = await maxq.start()
    assert (await server.get("/flows"))[1] == {"flows": []}
    server.flows.add("late", "exit 0\n", steps={"s": "exit 0\n"})
    status, body = await server.get("/flows/late")
    assert status == 200, body
    assert body["steps"] == ["s"]
    run = await server.trigger("late")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed"


async def test_symlinked_flow_outside_the_root_is_never_run(maxq):
    server = await maxq.start()
    marker = state_dir(server, "linked") / "ran"
    outside = server.flows.root.parent / "outside-flow"
    server.flows.write_script(outside / "flow.sh", f"echo ran >> '{marker}'\n")
    (server.flows.root / "linked").symlink_to(outside, target_is_directory=True)
    status, body = await server.get("/flows")
    assert status == 200, body
    assert "linked" not in [f["name"] for f in body["flows"]]
    assert_error(await server.get("/flows/linked"), 404, "FLOW_NOT_FOUND")
    assert_error(await server.post("/flows/linked/runs", {}), 404, "FLOW_NOT_FOUND")
    assert read_lines(marker) == []


async def test_odd_flow_yaml_is_not_a_server_fault(maxq):
    """
    flow.yaml is user data: whatever it holds, listing flows answers 200
    with JSON (the flow listed with what could be read, or left out).
    """
    server = await maxq.start()
    server.flows.add("good", "exit 0\n", flow_yaml="title: Good\n")
    odd = {
        "unclosed": b"title: [unclosed\n",
        "alist": b"- a\n- b\n",
        "notutf8": b"title: \xff\xfe\n",
        "adate": b"title: 2024-01-01\nschedule: 2024-01-01 10:00:00\n",
        "binary": b"description: !!binary aGVsbG8=\n",
        "nested": b"title: {a: [1, 2]}\n",
    }
    problems = []
    for name, raw in odd.items():
        server.flows.add(name, "exit 0\n")
        (server.flows.root / name / "flow.yaml").write_bytes(raw)
        status, body = await server.get(f"/flows/{name}")
        if status != 200 or not isinstance(body, dict):
            problems.append((name, status, body))
    assert [p[:2] for p in problems] == [], problems
    status, body = await server.get("/flows")
    assert status == 200, body
    assert "good" in [f["name"] for f in body["flows"]]
