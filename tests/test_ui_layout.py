"""
The DAG layout of the web UI (maxq/ui/layout.py) and the pure helpers of
its pages (maxq/ui/views.py, maxq/ui/session.py).
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock

from maxq.ui import layout as dag
from maxq.ui import views
from maxq.ui.session import LIFETIME_MS, Sessions, cookie_header


def step(id, stage="s", name="n", deps=(), status="pending"):
    return {"id": id, "stage": stage, "name": name, "status": status,
            "depends_on": list(deps)}


def by_key(result):
    return {n.key: n for n in result.nodes}


def test_layout_stages_are_columns_left_to_right_and_layers_inside():
    steps = [step("a", "one"), step("b", "one", deps=["a"]), step("c", "two", deps=["b"]),
             step("d", "two", deps=["c"]), step("e", "two")]
    stages = [{"name": "one", "status": "completed"}, {"name": "two", "status": "running"}]
    nodes = by_key(dag.layout(steps, stages))
    columns = {k.split(":", 1)[1]: n.column for k, n in nodes.items()}
    assert columns == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 2}
    assert nodes["step:a"].x < nodes["step:b"].x < nodes["step:c"].x < nodes["step:d"].x


def test_layout_has_an_edge_for_every_dependency_across_stages_too():
    steps = [step("a", "one"), step("b", "one"), step("c", "two", deps=["a", "b"]),
             step("d", "three", deps=["a", "c"])]
    result = dag.layout(steps)
    edges = {(e.source, e.target) for e in result.edges}
    assert edges == {("step:a", "step:c"), ("step:b", "step:c"), ("step:a", "step:d"),
                     ("step:c", "step:d")}
    for e in result.edges:
        assert e.path.startswith("M") and " C" in e.path
    assert [b.name for b in result.stages] == ["one", "two", "three"]


def test_layout_stage_order_follows_the_run_not_the_steps():
    steps = [step("late", "second"), step("early", "first")]
    stages = [{"name": "first", "status": "completed"}, {"name": "second", "status": "pending"}]
    nodes = by_key(dag.layout(steps, stages))
    assert nodes["step:early"].column == 0 and nodes["step:late"].column == 1


def test_barycenter_sweeps_remove_a_crossing():
    # Created in an order that crosses: c depends on b, d on a.
    steps = [step("a", "one"), step("b", "one"), step("c", "two", deps=["b"]),
             step("d", "two", deps=["a"])]
    result = dag.layout(steps)
    assert dag.crossings(result) == 0
    nodes = by_key(result)
    assert nodes["step:d"].row < nodes["step:c"].row


def _random_run(seed: int, n: int = 300):
    rng = random.Random(seed)
    steps = []
    for i in range(n):
        stage = f"st{i * 5 // n}"
        earlier = [s["id"] for s in steps]
        deps = sorted({rng.choice(earlier) for _ in range(2)}) if earlier else []
        steps.append(step(f"s{i}", stage, f"n{i % 7}", deps))
    return steps


def test_layout_is_deterministic_and_crosses_less_than_creation_order():
    steps = _random_run(7)
    first, second = dag.layout(steps), dag.layout([dict(s) for s in steps])
    assert [(n.key, n.x, n.y) for n in first.nodes] == [(n.key, n.x, n.y) for n in second.nodes]
    assert [e.path for e in first.edges] == [e.path for e in second.edges]
    saved = dag.SWEEPS
    try:
        dag.SWEEPS = 0
        unswept = dag.layout(steps)
    finally:
        dag.SWEEPS = saved
    assert dag.crossings(first) < dag.crossings(unswept)


def test_no_two_nodes_overlap_and_all_fit_the_drawing():
    result = dag.layout(_random_run(3, 200))
    places = {(n.x, n.y) for n in result.nodes}
    assert len(places) == len(result.nodes)
    for n in result.nodes:
        assert 0 <= n.x and n.x + dag.NODE_WIDTH <= result.width
        assert 0 <= n.y and n.y + dag.NODE_HEIGHT <= result.height


def test_a_big_stage_folds_steps_sharing_a_script_into_groups():
    steps = [step("root", "prep")]
    steps += [step(f"w{i}", "work", "shard" if i % 2 else "probe", ["root"],
                   "failed" if i == 3 else "completed") for i in range(dag.GROUP_THRESHOLD + 50)]
    steps += [step("sum", "work", "sum", [f"w{i}" for i in range(10)])]
    result = dag.layout(steps)
    groups = [n for n in result.nodes if n.is_group]
    assert sorted(g.label for g in groups) == ["probe", "shard", "sum"]
    shard = next(g for g in groups if g.label == "shard")
    assert len(shard.members) == 125 and shard.status == "failed"
    assert shard.counts == {"completed": 124, "failed": 1}
    edges = {(e.source, e.target) for e in result.edges}
    assert ("step:root", shard.key) in edges
    assert len(result.edges) == len(edges)  # one edge per pair of nodes
    # Unfolding one group draws its steps again, each with its own edges.
    unfolded = dag.layout(steps, expanded={shard.key})
    keys = by_key(unfolded)
    assert "step:w1" in keys and shard.key not in keys
    assert ("step:root", "step:w1") in {(e.source, e.target) for e in unfolded.edges}


def test_a_cycle_in_the_rows_does_not_hang_the_layout():
    steps = [step("a", deps=["b"]), step("b", deps=["a"])]
    assert len(dag.layout(steps).nodes) == 2


def test_an_empty_run_has_a_drawing():
    result = dag.layout([], [])
    assert result.nodes == [] and result.width > 0 and result.height > 0


# ------------------------------------------------------------------ views

def test_durations_are_human():
    assert views.duration(None) == ""
    assert views.duration(350) == "350ms"
    assert views.duration(4200) == "4.2s"
    assert views.duration(185_000) == "3m 05s"
    assert views.duration(3_720_000) == "1h 02m"
    assert views.duration(90_000_000) == "1d 01h"


def test_times_are_iso_utc_for_the_browser_to_localise():
    assert views.iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert views.shown_utc(1_796_300_000_123) == "2026-12-03 12:13:20 UTC"


def test_actions_follow_the_run_state():
    assert views.allowed_actions({"status": "running"}) == {"abort", "pause"}
    assert views.allowed_actions({"status": "paused"}) == {"abort", "resume"}
    assert views.allowed_actions({"status": "failed"}) == {"retry"}
    assert views.allowed_actions({"status": "completed"}) == set()


def test_retry_step_is_offered_for_the_cause_not_its_dependents():
    failed = {"status": "failed"}
    assert views.can_retry_step(failed, {"status": "failed", "error": {"reason": "exit"}})
    assert not views.can_retry_step(failed, {"status": "failed", "error": {
        "reason": "dependency_failed", "failedStep": "x"}})
    assert not views.can_retry_step({"status": "running"}, {"status": "failed"})
    assert not views.can_retry_step(failed, {"status": "completed"})


def test_timeline_bars_scale_to_the_run():
    run = {"started_at": 1000, "completed_at": 3000}
    steps = [dict(step("a", status="completed"), started_at=1000, completed_at=2000,
                  retry_count=0),
             dict(step("b", status="failed"), started_at=2000, completed_at=3000,
                  retry_count=2),
             dict(step("c"), started_at=None, completed_at=None, retry_count=0)]
    line = views.timeline(run, steps, now=5000)
    a, b = line["rows"]
    assert a["bars"][0]["x"] == 0 and a["bars"][0]["width"] == views.TIMELINE_WIDTH / 2
    assert b["bars"][0]["x"] == views.TIMELINE_WIDTH / 2 and b["bars"][0]["attempt"] == 3
    assert line["waiting"] == 1 and line["attempts"] == 2


def test_attempts_come_from_the_steps_status_changes():
    def ev(at, status, **data):
        return {"step_id": "s", "status": status, "at": at, "data": data}

    rows = [ev(0, "pending"), ev(10, "running", attempt=1),
            ev(20, "pending", attempt=1, exitCode=1, retryCount=1),
            ev(30, "running", attempt=2), ev(50, "completed", attempt=2, exitCode=0),
            {"step_id": None, "status": "running", "at": 5, "data": {}}]
    tries = views.attempts_from_events(rows)["s"]
    assert tries == [
        {"attempt": 1, "start": 10, "end": 20, "status": "failed"},
        {"attempt": 2, "start": 30, "end": 50, "status": "completed"},
    ]
    run = {"started_at": 0, "completed_at": 50}
    steps = [dict(step("s", status="completed"), started_at=30, completed_at=50,
                  retry_count=1)]
    line = views.timeline(run, steps, now=60, attempts={"s": tries})
    bars = line["rows"][0]["bars"]
    assert [b["status"] for b in bars] == ["failed", "completed"]
    assert bars[0]["x"] == views.TIMELINE_WIDTH * 10 / 50


def test_page_links():
    assert views.page_links(60, 25, 25) == {"total": 60, "limit": 25, "offset": 25,
                                            "first": 26, "last": 50, "prev": 0, "next": 50}
    assert views.page_links(0, 25, 0)["first"] == 0


# --------------------------------------------------------------- sessions

def test_sessions_are_signed_expire_and_bind_their_csrf_token():
    clock = Clock()
    sessions = Sessions(b"the-key", clock)
    value, max_age = sessions.issue()
    nonce = sessions.check(value)
    assert nonce and max_age == LIFETIME_MS // 1000
    token = sessions.csrf_token(nonce)
    flipped = token[:-1] + ("1" if token[-1] == "0" else "0")
    assert sessions.csrf_ok(nonce, token) and not sessions.csrf_ok(nonce, flipped)
    other, _ = sessions.issue()
    assert not sessions.csrf_ok(sessions.check(other), token)
    assert sessions.check(value[:-1] + ("0" if value[-1] != "0" else "1")) is None
    assert Sessions(b"another-key", clock).check(value) is None
    assert Sessions(b"the-key", clock).check(value) == nonce  # any server with the key
    clock.advance(LIFETIME_MS / 1000 + 1)
    assert sessions.check(value) is None


def test_the_cookie_is_http_only_and_same_site_strict():
    header = cookie_header("v", 60, secure=False).decode()
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Max-Age=60" in header
    assert "Secure" in cookie_header("v", 60, secure=True).decode()
