"""
The API in memory (L{tests.fakes.World}): requests through StubTreq to the
real Klein app, engine and SQLite store, with fake processes on a clock.
The same rules through real sockets and processes are in tests/integration/.
"""

from tests.fakes import step


def test_a_run_goes_from_trigger_to_completed_through_the_api(world):
    status, run = world.request("POST", "/api/v1/flows/f/runs", {"input": {"a": 1}})
    assert status == 201 and run["status"] == "pending"
    world.settle()
    run_id = run["id"]
    status, body = world.request("POST", f"/api/v1/runs/{run_id}/steps",
                                 {"stage": "s", "final": True,
                                  "steps": [step("a"), step("b", ["a"])]})
    assert status == 201 and body["scheduled"] == 2
    world.runner.flows()[0].exit(0)
    world.settle()
    (a,) = world.runner.by_step("a")
    assert world.runner.by_step("b") == []
    a.exit(0, stdout="hello\n")
    world.settle()
    world.runner.by_step("b")[0].exit(0)
    world.settle()
    status, run = world.request("GET", f"/api/v1/runs/{run_id}")
    assert status == 200 and run["status"] == "completed"
    assert [s["status"] for s in run["stages"]] == ["completed"]
    status, got = world.request("GET", f"/api/v1/runs/{run_id}/steps/a")
    assert got["stdout"] == "hello\n" and got["exitCode"] == 0


def test_bad_input_is_a_json_error_and_changes_nothing(world):
    status, body = world.request("POST", "/api/v1/runs", ["not", "an", "object"])
    assert status == 400 and body["code"] == "VALIDATION_ERROR"
    status, body = world.request("POST", "/api/v1/flows/nope/runs", {})
    assert status == 404 and body["code"] == "FLOW_NOT_FOUND"
    status, listing = world.request("GET", "/api/v1/runs?flowName=nope")
    assert status == 200 and listing["pagination"]["total"] == 0


def test_listing_pages_and_sorts(world):
    ids = []
    for _ in range(5):
        status, run = world.request("POST", "/api/v1/flows/f/runs", {})
        ids.append(run["id"])
        world.clock.advance(1)
    status, page = world.request("GET", "/api/v1/runs?limit=2&offset=1&sortOrder=asc")
    assert [r["id"] for r in page["runs"]] == ids[1:3]
    assert page["pagination"] == {"total": 5, "limit": 2, "offset": 1, "estimated": False}
    status, body = world.request("GET", "/api/v1/runs?sortBy=nope")
    assert status == 400 and body["code"] == "VALIDATION_ERROR"
