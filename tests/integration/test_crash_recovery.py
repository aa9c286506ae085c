"""
kill -9 of a real server mid-run, then a restart on the same database: the
run completes on its own, no completed step runs again, the interrupted
work runs again, and nothing of the old processes survives.
"""

from __future__ import annotations


from .conftest import pids_alive
from .exec_support import Scenario, stage, step, timed
from .subprocess_server import processes_with_env, backend_servers, subprocess_servers  # noqa: F401

# The first execution of a step blocks (and says where it is); later ones
# finish at once.
BLOCK_FIRST_TIME = """
if [ "$(wc -l < "$OUT/$MAXQ_STEP_ID.start")" -eq 1 ]; then
  echo $$ > "$OUT/$MAXQ_STEP_ID.pid"
  sleep 60
fi
"""




@timed(60)
async def test_kill_9_mid_run_then_restart_completes_without_rerunning(
        backend_servers):
    server = backend_servers()
    await server.start()
    sc = Scenario(server, "f")
    sc.setup(
        plan={"start": stage("s", [
            step("c1", "quick"), step("c2", "quick"), step("long"),
            step("p1", "quick", dependsOn=["long"]),
            step("p2", "quick", dependsOn=["long"]),
            step("p3", "quick", dependsOn=["p1"]),
        ], final=True)},
        steps={"quick": """post_fields '{"fields": {"done": true}}'""",
               "long": BLOCK_FIRST_TIME},
    )
    run_id = await sc.trigger()
    await server.wait_step(run_id, "c1", {"completed"})
    await server.wait_step(run_id, "c2", {"completed"})
    pid = int((await sc.wait_file("long.pid")).read_text())
    # The process group is recorded shortly after the step started.
    async def group_recorded():
        return server.query("SELECT status, pgid FROM steps WHERE id = 'long'") == \
            [("running", pid)]

    await server.wait_for(group_recorded, what="the step's process group recorded")

    await server.kill()
    assert pids_alive([pid]) == [pid], "the step outlived its server"
    assert [s["status"] for s in await _steps_in_db(server)] == \
        ["completed", "completed", "running", "pending", "pending", "pending"]

    await server.start()
    assert pids_alive([pid]) == [], "leftover terminated before serving"
    run = await server.wait_run(run_id, timeout=20)
    assert run["status"] == "completed", run
    assert {sid: sc.starts(sid) for sid in ("c1", "c2", "long", "p1", "p2", "p3")} == \
        {"c1": 1, "c2": 1, "long": 2, "p1": 1, "p2": 1, "p3": 1}
    c1 = await sc.step(run_id, "c1")
    assert c1["fields"] == {"done": True}, "fields are kept"
    long = await sc.step(run_id, "long")
    assert (long["status"], long["retryCount"]) == ("completed", 0)
    assert server.query("SELECT interruptions FROM steps WHERE id = 'long'") == [(1,)]
    status, logs = await server.get(f"/runs/{run_id}/logs?entityType=step&entityId=long")
    assert any("interrupted (server_restart)" in e["message"] for e in logs["logs"]), logs
    assert processes_with_env("MAXQ_RUN_ID", run_id) == []


async def _steps_in_db(server):
    rows = server.query("SELECT id, status FROM steps ORDER BY created_at, id")
    return [{"id": r[0], "status": r[1]} for r in rows]


@timed(60)
async def test_interrupted_flow_callback_is_delivered_again(backend_servers):
    server = backend_servers()
    await server.start()
    sc = Scenario(server, "f")
    sc.setup(
        plan={"start": stage("s", [step("x")]),
              "done-s": stage("t", [step("y")], final=True)},
        steps={"x": BLOCK_FIRST_TIME, "y": ""},
        # The first invocation blocks after it scheduled its stage.
        extra="""
        if [ "$key" = start ] && [ "$(grep -c '^start [0-9]* start ' "$OUT/flow.log")" -eq 1 ]; then
          echo $$ > "$OUT/flow.pid"
          sleep 60
        fi
        """,
    )
    run_id = await sc.trigger()
    flow_pid = int((await sc.wait_file("flow.pid")).read_text())
    x_pid = int((await sc.wait_file("x.pid")).read_text())

    await server.kill()
    await server.start()
    assert pids_alive([flow_pid, x_pid]) == []
    run = await server.wait_run(run_id, timeout=20)
    # The redelivered callback posted stage s again: accepted, not
    # STAGE_EXISTS (which would have failed the flow and the run).
    assert run["status"] == "completed", (run, sc.read("curl.log"))
    assert sc.flow_keys() == ["start", "start", "done-s"]
    assert (sc.starts("x"), sc.starts("y")) == (2, 1)
    assert processes_with_env("MAXQ_RUN_ID", run_id) == []
