"""
SPEC §2 rules 4 and 5 (the attempt side): exit status decides, retries with
delay and backoff, signals and timeouts are failed attempts.
"""

from __future__ import annotations

from .conftest import pids_alive
from .exec_support import Scenario, stage, step, timed

MS = 1_000_000  # ns


@timed(30)
async def test_retries_until_success_with_delay_and_backoff(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("r", "flaky", max_retries=3, retryDelayMs=150, retryBackoff=2),
        ], final=True)},
        steps={"flaky": """
            echo "$MAXQ_ATTEMPT" >> "$OUT/attempts"
            if [ "$MAXQ_ATTEMPT" -lt 3 ]; then finish 1; fi
        """},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    assert sc.read("attempts").split() == ["1", "2", "3"]
    r = await sc.step(run["id"], "r")
    assert r["status"] == "completed"
    assert r["retryCount"] == 2
    assert r["maxRetries"] == 3
    assert r["exitCode"] == 0
    starts = sc.marks("r", "start")
    ends = sc.marks("r", "end")
    assert [a for a, _ in starts] == [1, 2, 3]
    assert [a for a, _ in ends] == [1, 2, 3]
    # Only lower bounds: the gap after a failure is at least the delay, and
    # the second delay is at least retryDelayMs * retryBackoff.
    gap1 = starts[1][1] - ends[0][1]
    gap2 = starts[2][1] - ends[1][1]
    assert gap1 >= 150 * MS, gap1 / MS
    assert gap2 >= 300 * MS, gap2 / MS


@timed(30)
async def test_retry_delay_with_backoff_one(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("r", "flaky", max_retries=2, retryDelayMs=200, retryBackoff=1),
        ], final=True)},
        steps={"flaky": '[ "$MAXQ_ATTEMPT" -lt 3 ] && finish 4'},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    starts, ends = sc.marks("r", "start"), sc.marks("r", "end")
    assert len(starts) == 3
    for i in range(2):
        assert starts[i + 1][1] - ends[i][1] >= 200 * MS


@timed(30)
async def test_retries_exhausted_fails_step(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("r", "bad", max_retries=2, retryDelayMs=50),
        ], final=True)},
        steps={"bad": 'echo "attempt $MAXQ_ATTEMPT" >&2; finish 3'},
    )
    run = await sc.run()
    assert run["status"] == "failed", run
    assert [a for a, _ in sc.marks("r")] == [1, 2, 3]
    r = await sc.step(run["id"], "r")
    assert r["status"] == "failed"
    assert r["retryCount"] == 2
    assert r["exitCode"] == 3
    assert r["error"] == {"reason": "exit_code", "exitCode": 3}
    assert "attempt 3" in r["stderr"]


@timed(30)
async def test_max_retries_zero_runs_once(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("r", "bad", max_retries=0)], final=True)},
        steps={"bad": "finish 1"},
    )
    run = await sc.run()
    assert run["status"] == "failed", run
    assert sc.starts("r") == 1
    r = await sc.step(run["id"], "r")
    assert r["retryCount"] == 0
    assert r["error"] == {"reason": "exit_code", "exitCode": 1}


@timed(30)
async def test_exit_status_decides_not_posted_fields(maxq):
    """
    Fields posted by a step never decide its status.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("liar-ok", "says_ok"),
            step("liar-bad", "says_failed"),
        ], final=True, failFast=False)},
        steps={
            "says_ok": """post_fields '{"fields": {"status": "completed", "ok": true}}'
                          finish 2""",
            "says_failed": """post_fields '{"fields": {"status": "failed", "ok": false}}'
                              exit 0""",
        },
    )
    run = await sc.run()
    steps = await sc.steps_by_id(run["id"])
    assert steps["liar-ok"]["status"] == "failed", steps["liar-ok"]
    assert steps["liar-ok"]["error"] == {"reason": "exit_code", "exitCode": 2}
    assert steps["liar-ok"]["fields"] == {"status": "completed", "ok": True}
    assert steps["liar-bad"]["status"] == "completed", steps["liar-bad"]
    assert steps["liar-bad"]["fields"] == {"status": "failed", "ok": False}
    assert run["status"] == "failed"


@timed(30)
async def test_signal_killed_step_is_failed_attempt(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("once", "selfkill", max_retries=1, retryDelayMs=50),
            step("always", "selfkill_always"),
        ], final=True, failFast=False)},
        steps={
            "selfkill": '[ "$MAXQ_ATTEMPT" = 1 ] && kill -KILL $$',
            "selfkill_always": "kill -KILL $$",
        },
    )
    run = await sc.run()
    steps = await sc.steps_by_id(run["id"])
    once, always = steps["once"], steps["always"]
    assert once["status"] == "completed", once
    assert once["retryCount"] == 1
    assert [a for a, _ in sc.marks("once")] == [1, 2]
    assert always["status"] == "failed", always
    assert always["error"] == {"reason": "signal", "signal": 9}
    assert always["exitCode"] != 0
    assert run["status"] == "failed"


@timed(30)
async def test_signal_terminated_step_is_failed_attempt(maxq):
    """
    A SIGTERM the step did not get from the server (killed by someone
    else) is a failed attempt too.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("t", "selfterm")], final=True)},
        steps={"selfterm": "kill -TERM $$; sleep 5"},
    )
    run = await sc.run()
    t = await sc.step(run["id"], "t")
    assert t["status"] == "failed", t
    assert t["error"] == {"reason": "signal", "signal": 15}
    assert run["status"] == "failed"


@timed(30)
async def test_timeout_terminates_step(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("t", "sleepy", timeoutSeconds=1)], final=True)},
        steps={"sleepy": """
            sleep 30 &
            echo $! > "$OUT/sleep.pid"
            wait
        """},
    )
    run = await sc.run()
    t = await sc.step(run["id"], "t")
    assert t["status"] == "failed", t
    assert t["error"]["reason"] == "timeout", t
    assert t["terminationReason"] == "timeout"
    assert t["durationMs"] is None or t["durationMs"] >= 1000
    assert sc.marks("t", "end") == []
    pid = int(sc.read("sleep.pid"))
    await server.wait_for(lambda: _none_alive([pid]), 10, what="sleep child gone")
    assert run["status"] == "failed"


@timed(30)
async def test_timeout_counts_as_failed_attempt_and_retries(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("t", "slow_first", max_retries=1, timeoutSeconds=1, retryDelayMs=50),
        ], final=True)},
        steps={"slow_first": '[ "$MAXQ_ATTEMPT" = 1 ] && sleep 30'},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    t = await sc.step(run["id"], "t")
    assert t["status"] == "completed"
    assert t["retryCount"] == 1
    assert [a for a, _ in sc.marks("t")] == [1, 2]
    assert [a for a, _ in sc.marks("t", "end")] == [2]


async def _none_alive(pids):
    return not pids_alive(pids)


@timed(30)
async def test_step_timeout_from_env(maxq):
    """
    SPEC §2: "timeoutSeconds (or the env MAXQ_STEP_TIMEOUT)": the one MAXQ_
    key a step's env may carry.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("t", "sleepy", env={"MAXQ_STEP_TIMEOUT": "1"}),
        ], final=True)},
        steps={"sleepy": "sleep 30"},
    )
    run = await sc.run()
    t = await sc.step(run["id"], "t")
    assert t["status"] == "failed", t
    assert t["error"] == {"reason": "timeout"}, t
    assert t["terminationReason"] == "timeout"
