"""
SPEC §2 rules 2, 3, 6, 7, 8, 9: ordering by dependsOn, parallelism, the
concurrency limit, stage completion, callbacks, the final stage.
"""

from __future__ import annotations

from .exec_support import Scenario, max_overlap, settle, stage, step, timed


@timed(30)
async def test_depends_on_orders_steps(maxq):
    """
    A diamond a -> (b, c) -> d: no step starts before all its dependencies
    have ended.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("d", "work", dependsOn=["b", "c"]),
            step("b", "work", dependsOn=["a"]),
            step("c", "work", dependsOn=["a"]),
            step("a", "work"),
        ], final=True)},
        steps={"work": "sleep 0.1"},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    a, b, c, d = (sc.interval(x) for x in "abcd")
    assert b[0] >= a[1]
    assert c[0] >= a[1]
    assert d[0] >= b[1]
    assert d[0] >= c[1]
    steps = await sc.steps_by_id(run["id"])
    assert {s["status"] for s in steps.values()} == {"completed"}
    assert steps["d"]["dependsOn"] == ["b", "c"]
    for s in steps.values():
        assert s["retryCount"] == 0
        assert s["exitCode"] == 0
        assert s["startedAt"] <= s["completedAt"]


@timed(30)
async def test_independent_steps_run_in_parallel(maxq):
    server = await maxq.start(max_concurrent_steps=10)
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step(f"p{i}", "nap") for i in range(3)], final=True)},
        steps={"nap": "sleep 0.8"},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    intervals = [sc.interval(f"p{i}") for i in range(3)]
    # Every pair overlaps: the latest start is before the earliest end.
    assert max(s for s, _ in intervals) < min(e for _, e in intervals), intervals


@timed(40)
async def test_concurrency_limit_is_respected(maxq):
    """
    max_concurrent_steps=2: never more than two step scripts at once, across
    two runs, and the two slots are used.
    """
    server = await maxq.start(max_concurrent_steps=2)
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step(f"c{i}", "nap") for i in range(5)], final=True)},
        steps={"nap": "sleep 0.25"},
    )
    first = await sc.trigger()
    run = await sc.run()
    first_run = await sc.finish(first)
    assert run["status"] == first_run["status"] == "completed"
    # Both runs write the same marker files (same step ids), one line each.
    intervals = []
    for i in range(5):
        starts = sc.marks(f"c{i}", "start")
        ends = sc.marks(f"c{i}", "end")
        assert len(starts) == len(ends) == 2, (starts, ends)
        intervals += list(zip(sorted(ns for _, ns in starts), sorted(ns for _, ns in ends)))
    assert max_overlap(intervals) <= 2, sorted(intervals)
    assert max_overlap(intervals) == 2, sorted(intervals)


@timed(30)
async def test_each_step_claimed_exactly_once(maxq):
    server = await maxq.start(max_concurrent_steps=6, scheduler_batch_size=3)
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step(f"x{i}", "once") for i in range(40)], final=True)},
        steps={"once": "true"},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    for i in range(40):
        assert sc.starts(f"x{i}") == 1, f"x{i}"


@timed(30)
async def test_depends_on_step_of_earlier_completed_stage(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={
            "start": stage("s1", [step("a", "work")]),
            "done-s1": stage("s2", [step("b", "work", dependsOn=["a"])], final=True),
        },
        steps={"work": "sleep 0.05"},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    assert sc.interval("b")[0] >= sc.interval("a")[1]
    steps = await sc.steps_by_id(run["id"])
    assert steps["a"]["stage"] == "s1"
    assert steps["b"]["stage"] == "s2"
    assert steps["b"]["dependsOn"] == ["a"]
    assert steps["b"]["status"] == "completed"


@timed(30)
async def test_stages_complete_and_final_stage_completes_run(maxq):
    """
    Each stage completes when its steps have; the final stage completes the
    run and flow.sh is not called after it.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={
            "start": stage("s1", [step("a", "ok"), step("b", "ok")]),
            "done-s1": stage("s2", [step("c", "ok")], final=True),
            # Would be posted if the flow were (wrongly) called after s2.
            "done-s2": stage("s3", [step("z", "ok")], final=True),
        },
        steps={"ok": "true"},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    assert run["error"] in (None, {}), run
    assert run["startedAt"] and run["completedAt"] and run["completedAt"] >= run["startedAt"]
    stages = {s["name"]: s for s in run["stages"]}
    assert set(stages) == {"s1", "s2"}
    assert stages["s1"]["status"] == "completed"
    assert stages["s1"]["final"] is False
    assert stages["s2"]["status"] == "completed"
    assert stages["s2"]["final"] is True
    assert stages["s1"]["completedAt"] and stages["s2"]["completedAt"]
    await settle(server.reactor)
    assert sc.flow_keys() == ["start", "done-s1"]
    assert sc.starts("z") == 0


@timed(30)
async def test_flow_scheduling_nothing_completes_run(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(plan={})
    run = await sc.run()
    assert run["status"] == "completed", run
    assert run["stages"] == []
    await settle(server.reactor)
    assert sc.flow_keys() == ["start"]
    assert sc.flow_log()[0]["completed"] == ""
    assert sc.flow_log()[0]["failed"] == "<unset>"


@timed(30)
async def test_non_final_stage_then_nothing_completes_run(maxq):
    """
    After a completed non-final stage the flow is called; scheduling nothing
    there completes the run.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("a", "ok")])},
        steps={"ok": "true"},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    assert sc.flow_keys() == ["start", "done-s1"]
    assert sc.flow_log()[1]["completed"] == "s1"


@timed(30)
async def test_callbacks_in_order_one_flow_at_a_time(maxq):
    """
    The first call schedules stages A and B and keeps running while both
    complete; their callbacks wait for it and for each other, and come in
    completion order, once each.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={
            "start": [stage("A", [step("a", "ok")]), stage("B", [step("b", "slowish")])],
            "done-A": stage("C", [step("c", "slow")], final=True),
        },
        steps={"ok": "true", "slowish": "sleep 0.2", "slow": "sleep 0.8"},
        extra="""
        if [ "$key" = start ]; then
          for i in $(seq 100); do [ -e "$OUT/b.end" ] && break; sleep 0.05; done
          sleep 0.2
        fi
        sleep 0.1
        """,
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    calls = sc.flow_log()
    assert [c["key"] for c in calls] == ["start", "done-A", "done-B"], calls
    for call in calls:
        assert call["end"] is not None, calls
    for earlier, later in zip(calls, calls[1:]):
        assert later["start"] >= earlier["end"], calls
    # A and B both completed during the first call; their callbacks came after it.
    assert sc.interval("b")[1] < calls[0]["end"]


@timed(30)
async def test_dependency_rejections(maxq):
    """
    Unknown dependencies and cycles are rejected and change nothing.
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("hold", [step("h", "hold")], final=True)},
        steps={"hold": 'while [ ! -e "$OUT/go" ]; do sleep 0.05; done'},
    )
    run_id = await sc.trigger()
    await server.wait_step(run_id, "h", {"running"})
    url = f"/runs/{run_id}/steps"
    status, body = await server.post(url, stage("bad", [step("x", "hold", dependsOn=["nope"])]))
    assert status == 400 and body["code"] == "UNKNOWN_DEPENDENCY", body
    status, body = await server.post(url, stage("bad", [
        step("x", "hold", dependsOn=["y"]), step("y", "hold", dependsOn=["x"])]))
    assert status == 400 and body["code"] == "DEPENDENCY_CYCLE", body
    status, body = await server.post(url, stage("bad", [step("x", "hold", dependsOn=["x"])]))
    assert status == 400 and body["code"] == "DEPENDENCY_CYCLE", body
    assert [s["id"] for s in await server.steps(run_id)] == ["h"]
    sc.touch("go")
    run = await sc.finish(run_id)
    assert run["status"] == "completed", run
    assert [s["name"] for s in run["stages"]] == ["hold"]


@timed(30)
async def test_trigger_creates_run_then_flow_starts_it(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={},
        pre='while [ ! -e "$OUT/go" ]; do sleep 0.02; done',
    )
    status, created = await server.post(f"/flows/{sc.flow}/runs", {})
    assert status == 201, created
    assert created["status"] in ("pending", "running"), created
    run = await server.wait_run(created["id"], {"running"})
    assert run["startedAt"] is not None
    assert run["startedAt"] >= run["createdAt"]
    await server.wait_for(lambda: _exists(sc.out / "flow.log"), what="flow started")
    sc.touch("go")
    run = await sc.finish(created["id"])
    assert run["status"] == "completed", run
    assert run["completedAt"] >= run["startedAt"]


@timed(60)
async def test_two_servers_on_one_database_run_everything_once(maxq, tmp_path):
    """
    SPEC §2 rules 3 and 8 with two servers sharing one database and flows
    root: every step runs once, every callback is delivered once, one
    flow.sh of a run at a time.
    """
    db = tmp_path / "shared.db"
    root = tmp_path / "shared-flows"
    one = await maxq.start(flows_root=root, sqlite_path=db, worker_id="one",
                           max_concurrent_steps=3)
    two = await maxq.start(flows_root=root, sqlite_path=db, worker_id="two",
                           max_concurrent_steps=3)
    scenarios = []
    for n in range(4):
        sc = Scenario(one, f"f{n}").setup(
            plan={
                "start": [stage("A", [step(f"a{i}", "ok") for i in range(10)]),
                          stage("B", [step(f"b{i}", "ok") for i in range(10)])],
                "done-A": stage("C", [step(f"c{i}", "ok", dependsOn=[f"a{i}"])
                                      for i in range(10)]),
            },
            steps={"ok": "sleep 0.01"},
            extra="sleep 0.1",
        )
        scenarios.append(sc)
    run_ids = []
    for n, sc in enumerate(scenarios):
        server = (one, two)[n % 2]
        run_ids.append((await server.trigger(sc.flow))["id"])
    workers = set()
    for sc, run_id in zip(scenarios, run_ids):
        run = await sc.finish(run_id, timeout=40)
        assert run["status"] == "completed", run
        for prefix in "abc":
            for i in range(10):
                assert sc.starts(f"{prefix}{i}") == 1, (sc.flow, prefix, i)
        calls = sc.flow_log()
        keys = [c["key"] for c in calls]
        assert sorted(keys) == ["done-A", "done-B", "done-C", "start"], keys
        assert keys[0] == "start"
        for earlier, later in zip(calls, calls[1:]):
            assert earlier["end"] is not None and later["start"] >= earlier["end"], calls
        workers |= {s["workerId"] for s in await server_steps(one, run_id)}
    assert workers <= {"one", "two"}, workers


async def server_steps(server, run_id):
    return await server.steps(run_id)


async def _exists(path):
    return path.exists()
