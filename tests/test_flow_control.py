"""
Flow control (SPEC §6) in the scheduler and the engine, on a deterministic
clock with the fake runner: every limit, the priority order, pools,
placement (no_worker), continueOnFailure and inputs; and the pure rules of
maxq.control.  No processes, no sleeps.
"""

from __future__ import annotations

import pytest

from maxq import control
from maxq.errors import Invalid
from tests.fakes import resolved
from tests.fakes import World, step


def running_steps(w) -> list[str]:
    return sorted(h.env["MAXQ_STEP_ID"] for h in w.runner.running
                  if "MAXQ_STEP_ID" in h.env)


def finish(w, step_id, code=0):
    (handle,) = [h for h in w.runner.by_step(step_id) if h in w.runner.running]
    handle.exit(code)
    w.settle()


def write_yaml(tmp_path, text):
    (tmp_path / "f").mkdir(exist_ok=True)
    (tmp_path / "f" / "flow.yaml").write_text(text)


@pytest.fixture
def make(tmp_path):
    worlds = []

    def build(**overrides):
        w = World(tmp_path, **overrides)
        worlds.append(w)
        return w

    yield build
    for w in worlds:
        w.stop()


def test_max_parallel_holds_and_says_why(make):
    w = make()
    run_id = w.trigger()
    w.schedule(run_id, [step(f"s{i}") for i in range(4)], maxParallel=2)
    w.settle()
    assert running_steps(w) == ["s0", "s1"]
    assert w.step(run_id, "s2")["wait_reason"] == {
        "reason": "stage_limit", "limit": 2, "stage": "s"}
    finish(w, "s0")
    assert running_steps(w) == ["s1", "s2"]
    assert w.step(run_id, "s2")["wait_reason"] is None
    finish(w, "s1")
    finish(w, "s2")
    finish(w, "s3")
    assert w.step(run_id, "s3")["status"] == "completed"


def test_max_running_steps_counts_every_run_of_the_flow(make, tmp_path):
    write_yaml(tmp_path, "maxRunningSteps: 3\n")
    w = make()
    runs = [w.trigger() for _ in range(2)]
    for run_id in runs:
        w.schedule(run_id, [step(f"s{i}") for i in range(2)])
    w.settle()
    assert len(running_steps(w)) == 3
    waiting = [w.step(r, s)["wait_reason"] for r in runs for s in ("s0", "s1")
               if w.step(r, s)["status"] == "pending"]
    assert waiting == [{"reason": "flow_step_limit", "limit": 3, "flow": "f"}]


def test_max_active_runs_keeps_runs_pending_and_starts_by_priority(make, tmp_path):
    write_yaml(tmp_path, "maxActiveRuns: 1\n")
    w = make()
    first = w.trigger()
    low, _ = resolved(w.engine.create_run("f", {}, None))
    high, _ = resolved(w.engine.create_run("f", {"priority": 9}, None))
    w.settle()
    assert len(w.runner.flows()) == 1, "flow.sh of the held runs is not invoked"
    assert w.run_status(low["id"]) == "pending"
    assert resolved(w.engine.get_run(low["id"]))["wait_reason"] == {
        "reason": "flow_limit", "limit": 1, "flow": "f"}
    w.runner.flows()[0].exit(0)
    w.settle()
    assert w.run_status(first) == "completed"
    assert w.run_status(high["id"]) == "running"
    assert w.run_status(low["id"]) == "pending"
    assert resolved(w.engine.get_run(high["id"]))["wait_reason"] is None


def test_pool_slots_are_never_exceeded_and_nothing_overtakes_in_a_pool(make):
    w = make()
    resolved(w.engine.put_pool("db", {"slots": 2}))
    run_id = w.trigger()
    w.schedule(run_id, [step("a", pool="db"), step("big", pool="db", poolSlots=2),
                        step("c", pool="db"), step("free")])
    w.settle()
    assert running_steps(w) == ["a", "free"]
    assert w.step(run_id, "big")["wait_reason"] == {
        "reason": "pool", "pool": "db", "slots": 2, "need": 2}
    # c would fit the free slot, but big waits before it.
    assert w.step(run_id, "c")["wait_reason"]["reason"] == "pool"
    (pool,) = resolved(w.engine.list_pools())
    assert pool == {"name": "db", "slots": 2, "used": 1, "waiting": 2}
    finish(w, "a")
    assert running_steps(w) == ["big", "free"]
    finish(w, "big")
    assert running_steps(w) == ["c", "free"]


def test_a_bigger_pool_lets_waiting_steps_run_at_once(make):
    w = make()
    resolved(w.engine.put_pool("db", {"slots": 0}))
    run_id = w.trigger()
    w.schedule(run_id, [step("a", pool="db")])
    w.settle()
    assert running_steps(w) == []
    resolved(w.engine.put_pool("db", {"slots": 1}))
    w.settle()
    assert running_steps(w) == ["a"]


def test_pool_refusals(make):
    w = make()
    run_id = w.trigger()
    with pytest.raises(Invalid) as e:
        w.schedule(run_id, [step("a", pool="nope")])
    assert e.value.code == "UNKNOWN_POOL"
    resolved(w.engine.put_pool("db", {"slots": 1}))
    w.schedule(run_id, [step("a", pool="db")])
    w.settle()
    with pytest.raises(Exception) as e:
        resolved(w.engine.delete_pool("db"))
    assert e.value.code == "POOL_IN_USE"


def test_priority_then_age_orders_the_claim(make):
    w = make(max_concurrent_steps=1)
    run_id = w.trigger()
    w.schedule(run_id, [step("old-low", priority=-1), step("old"), step("top", priority=3)],
               final=False)
    w.clock.advance(1)
    w.schedule(run_id, [step("new"), step("new-top", priority=3)], stage="t", final=False)
    w.settle()
    order = []
    while running_steps(w):
        (current,) = running_steps(w)
        order.append(current)
        finish(w, current)
    assert order == ["top", "new-top", "old", "new", "old-low"]


def test_server_limit_is_said_only_when_the_server_is_full(make):
    w = make(max_concurrent_steps=1)
    resolved(w.engine.put_pool("wide", {"slots": 5}))
    run_id = w.trigger()
    w.schedule(run_id, [step("a", pool="wide"), step("b", pool="wide")])
    w.settle()
    assert running_steps(w) == ["a"]
    assert w.step(run_id, "b")["wait_reason"] == {"reason": "server_limit", "limit": 1}


def test_a_step_requiring_a_label_this_server_lacks_waits_with_no_worker(make):
    w = make()
    run_id = w.trigger()
    w.schedule(run_id, [step("gpu", requires=["gpu"]), step("any")])
    w.settle()
    assert running_steps(w) == ["any"]
    assert w.step(run_id, "gpu")["wait_reason"] == {"reason": "no_worker",
                                                    "requires": ["gpu"]}


def test_a_server_with_the_labels_claims_the_step(make):
    w = make(worker_labels="gpu,big")
    run_id = w.trigger()
    w.schedule(run_id, [step("gpu", requires=["gpu", "big"])])
    w.settle()
    assert running_steps(w) == ["gpu"]


def test_flow_yaml_defaults_apply_to_its_steps(make, tmp_path):
    write_yaml(tmp_path, "pool: db\npriority: 4\nrequires: [gpu]\n")
    w = make(worker_labels="gpu")
    resolved(w.engine.put_pool("db", {"slots": 1}))
    run_id = w.trigger()
    w.schedule(run_id, [step("a"), step("b", priority=-2)])
    w.settle()
    a, b = w.step(run_id, "a"), w.step(run_id, "b")
    assert (a["pool"], a["priority"], a["requires"]) == ("db", 4, ["gpu"])
    assert b["priority"] == -2
    assert running_steps(w) == ["a"]


def test_continue_on_failure_runs_dependents_and_completes_the_stage(make):
    w = make()
    run_id = w.trigger()
    w.schedule(run_id, [step("a", continueOnFailure=True), step("b", ["a"])])
    w.runner.flows()[0].exit(0)
    w.settle()
    finish(w, "a", code=1)
    a = w.step(run_id, "a")
    assert (a["status"], a["allowed_failure"]) == ("failed", 1)
    assert running_steps(w) == ["b"]
    finish(w, "b")
    assert w.run_status(run_id) == "completed"


def test_inputs_become_env_and_a_missing_one_fails_the_attempt(make):
    w = make()
    run, _ = resolved(w.engine.create_run("f", {"input": {"n": {"k": [1, 2]}}}, None))
    w.settle()
    run_id = run["id"]
    w.schedule(run_id, [step("a"), step("b", ["a"], inputs={
        "OBJ": "a.out", "TEXT": "a.out.t", "RUN": "input.n.k"})], final=False)
    w.settle()
    resolved(w.engine.post_fields(run_id, "a", {"fields": {"out": {"t": "x y", "n": 1}}}))
    finish(w, "a")
    (b,) = w.runner.by_step("b")
    assert b.env["OBJ"] == '{"t":"x y","n":1}'
    assert b.env["TEXT"] == "x y" and b.env["RUN"] == "[1,2]"
    finish(w, "b")
    w.schedule(run_id, [step("c", ["a"], inputs={"GONE": "a.nothing"})], stage="t")
    w.settle()
    assert w.runner.by_step("c") == [], "an attempt without its input is not started"
    c = w.step(run_id, "c")
    assert c["status"] == "failed"
    assert c["error"] == {"reason": "missing_input", "input": "GONE"}


def test_no_limit_no_limited_claim(make):
    """
    Without limited work the limited claim looks once per interval at most.
    """
    w = make()
    calls = []
    real = w.store.transaction

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    looked = []
    original = type(w.engine.rules.control).due

    def due(self):
        result = original(self)
        looked.append(result)
        return result

    type(w.engine.rules.control).due = due
    try:
        run_id = w.trigger()
        w.schedule(run_id, [step(f"s{i}") for i in range(5)])
        w.settle()
        w.clock.advance(0.01)
        for i in range(5):
            finish(w, f"s{i}")
    finally:
        type(w.engine.rules.control).due = original
    assert looked.count(True) <= 2, looked


def test_decide_walks_in_order_and_counts_what_it_takes():
    counts = control.Counts(pool_slots={"p": 1})
    rows = [{"run_id": "r", "id": str(i), "stage": "s", "flow_name": "f", "pool": "p",
             "pool_slots": 1, "requires": None, "max_parallel": None} for i in range(3)]
    taken, waits = control.decide(rows, counts, {}, set(), None, 5, None)
    assert [r["id"] for r in taken] == ["0"]
    assert set(waits) == {("r", "1"), ("r", "2")}
    assert counts.pool_used == {"p": 1}


def test_parse_section_of_flow_yaml():
    from maxq.flowconfig import BadConfig
    assert control.parse_section({"concurrency": 2}) == {"max_active_runs": 2}
    assert control.parse_section({"maxActiveRuns": 1, "concurrency": 5}) == {
        "max_active_runs": 1}
    assert control.parse_section({"requires": "gpu, big"}) == {"requires": ["big", "gpu"]}
    for bad in ({"maxActiveRuns": 0}, {"maxRunningSteps": "2"}, {"priority": 101},
                {"pool": "a b"}, {"requires": [1]}):
        with pytest.raises(BadConfig):
            control.parse_section(bad)


def test_references():
    assert control.parse_ref("input.a.b") == (None, ["a", "b"])
    assert control.parse_ref("s1.f.0") == ("s1", ["f", "0"])
    for bad in ("s1", "s1.", ".f", "a b.f", 3, None):
        assert control.parse_ref(bad) is None
    env, missing = control.resolve_inputs({"A": "s.f.1", "B": "input.x"},
                                          {"x": False}, {"s": {"f": ["a", "b"]}})
    assert (env, missing) == ({"A": "b", "B": "false"}, None)
    assert control.resolve_inputs({"A": "s.g"}, None, {"s": {}})[1] == "A"


def test_a_limited_step_starts_at_once_when_its_plain_dependency_ends(make):
    w = make()
    resolved(w.engine.put_pool("db", {"slots": 1}))
    run_id = w.trigger()
    w.schedule(run_id, [step("plain"), step("pooled", ["plain"], pool="db")])
    w.settle()
    # Well past the limited claim's periodic look: only a hint may start it.
    w.clock.advance(5)
    finish(w, "plain")
    assert running_steps(w) == ["pooled"], "no wait for the scheduler interval"
