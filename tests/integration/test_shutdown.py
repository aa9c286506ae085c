"""
Graceful stop of a real server with SIGTERM: running steps get
MAXQ_SHUTDOWN_GRACE_MS to finish; past it they are terminated and left
pending for the next start; a second SIGTERM stops at once.  Every time
the server exits with nothing running and its database consistent.
"""

from __future__ import annotations

import signal

from .conftest import pids_alive
from .exec_support import Scenario, stage, step, timed
from .subprocess_server import processes_with_env, backend_servers, subprocess_servers  # noqa: F401

# twistd ends a stop it was asked for with a signal by re-raising that
# signal once everything is shut down (what systemd counts as a clean stop).
CLEAN_EXIT = (0, -signal.SIGTERM)




def assert_consistent(server):
    if server.backend == "sqlite":
        assert server.query("PRAGMA integrity_check") == [("ok",)]
    assert server.query("SELECT id FROM steps WHERE status = 'running'") == []
    assert server.query("SELECT id FROM flow_calls WHERE status = 'running'") == []


async def _wait_flow_ended(server) -> None:
    """
    flow.sh may still be exiting when the step it scheduled has started;
    wait for it, so that the step is the only process running.
    """
    async def ended():
        return server.query("SELECT id FROM flow_calls WHERE status = 'running'") == []

    await server.wait_for(ended, 15, what="flow.sh to end")


def _scenario(server, body: str) -> Scenario:
    return Scenario(server, "f").setup(
        plan={"start": stage("s", [step("w")], final=True)},
        steps={"w": 'echo $$ > "$OUT/w.pid"\n' + body},
    )


@timed(60)
async def test_sigterm_lets_a_running_step_finish_within_the_grace(backend_servers):
    server = backend_servers(env={"MAXQ_SHUTDOWN_GRACE_MS": 10000})
    await server.start()
    sc = _scenario(server, "sleep 1")
    run_id = await sc.trigger()
    await sc.wait_file("w.pid")
    assert await server.terminate() in CLEAN_EXIT
    assert server.query("SELECT status, retry_count FROM steps") == [("completed", 0)]
    assert server.query("SELECT status FROM runs") == [("completed",)]
    assert_consistent(server)
    assert sc.starts("w") == 1 and len(sc.marks("w", "end")) == 1
    assert processes_with_env("MAXQ_RUN_ID", run_id) == []


@timed(60)
async def test_sigterm_past_the_grace_requeues_then_restart_completes(
        backend_servers):
    server = backend_servers(env={"MAXQ_SHUTDOWN_GRACE_MS": 300})
    await server.start()
    sc = _scenario(server, """
        if [ "$(wc -l < "$OUT/w.start")" -eq 1 ]; then sleep 60; fi
    """)
    run_id = await sc.trigger()
    pid = int((await sc.wait_file("w.pid")).read_text())
    await _wait_flow_ended(server)
    assert await server.terminate() in CLEAN_EXIT
    assert pids_alive([pid]) == []
    assert server.query("SELECT status, retry_count, interruptions FROM steps") == \
        [("pending", 0, 0)]
    assert_consistent(server)
    assert processes_with_env("MAXQ_RUN_ID", run_id) == []
    assert "waiting up to 0.3s for 1 running processes" in server.log_text()

    await server.start()
    run = await server.wait_run(run_id)
    assert run["status"] == "completed", run
    assert sc.starts("w") == 2
    w = await sc.step(run_id, "w")
    assert (w["status"], w["retryCount"]) == ("completed", 0)


@timed(60)
async def test_second_sigterm_stops_at_once(backend_servers):
    # A long grace, and a step that ignores SIGTERM under a long abort grace:
    # only the second signal can make this quick.
    server = backend_servers(env={"MAXQ_SHUTDOWN_GRACE_MS": 60000,
                                     "MAXQ_ABORT_GRACE_MS": 60000})
    await server.start()
    sc = _scenario(server, "trap '' TERM\nsleep 60")
    run_id = await sc.trigger()
    pid = int((await sc.wait_file("w.pid")).read_text())
    server.signal(signal.SIGTERM)

    async def waiting():
        return "waiting up to 60.0s" in server.log_text()

    await server.wait_for(waiting, what="the grace to begin")
    assert server.alive
    server.signal(signal.SIGTERM)
    # Both graces are 60 s: exiting within the wait's bound shows the second
    # signal cut them short.
    assert await server.wait_exit(20) in CLEAN_EXIT
    assert pids_alive([pid]) == []
    assert server.query("SELECT status, retry_count FROM steps") == [("pending", 0)]
    assert_consistent(server)
    assert processes_with_env("MAXQ_RUN_ID", run_id) == []
