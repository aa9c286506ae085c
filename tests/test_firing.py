"""
FiringService (maxq/firing.py) on task.Clock: one timer at the earliest
next fire time (no per-second scan of every flow), fires through the
engine, edits and removals seen by the rescan, busy schedules retried.
"""

from __future__ import annotations

from twisted.internet import defer, task

from maxq.firing import BUSY_RETRY_MS, ERROR_RETRY_MS, FiringService
from maxq.flows import FlowsRoot


class FakeEngine:
    def __init__(self):
        self.fired: list[tuple[str, int]] = []
        self.busy: set[str] = set()
        self.broken: set[str] = set()
        self.batches: list[list[str]] = []

    def fire_schedule(self, name, spec, upto):
        self.fired.append((name, upto))
        if name in self.busy:
            self.busy.discard(name)
            return defer.succeed({"busy": True, "paused": False, "runs": []})
        return defer.succeed({"busy": False, "paused": False, "runs": []})

    def fire_schedules(self, fires):
        self.batches.append([name for name, _spec, _upto in fires])
        if self.broken & set(self.batches[-1]):
            # The transaction fails as a whole: nothing of it is kept.
            return defer.fail(RuntimeError("a broken flow"))
        results = {}
        for name, spec, upto in fires:
            results[name] = self.fire_schedule(name, spec, upto).result
        return defer.succeed(results)


def add_flow(root, name, yaml):
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    script = d / "flow.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    (d / "flow.yaml").write_text(yaml)


def make(tmp_path, start=1_000.0):
    clock = task.Clock()
    clock.advance(start)
    engine = FakeEngine()
    flows = FlowsRoot(tmp_path, monotonic=clock.seconds)
    service = FiringService(engine, flows, clock)
    return clock, engine, service


def test_first_sight_fires_at_once_then_one_timer_at_the_next_fire(tmp_path):
    add_flow(tmp_path, "a", 'schedule: "@every 10s"\n')
    add_flow(tmp_path, "b", 'schedule: "@every 7s"\n')
    clock, engine, service = make(tmp_path, start=1_003.0)
    service.startService()
    clock.advance(0)
    assert sorted(n for n, _ in engine.fired) == ["a", "b"]
    engine.fired.clear()
    # One delayed call for the fire times (the rescan loop is the other).
    timers = [c for c in clock.getDelayedCalls() if c.func == service._due]
    assert len(timers) == 1
    assert timers[0].getTime() == 1_008.0  # b: 7 s multiples; a: 1010
    clock.advance(5)
    assert engine.fired == [("b", 1_008_000)]
    clock.advance(2)
    assert engine.fired[-1] == ("a", 1_010_000)
    service.stopService()
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def test_idle_hourly_schedules_fire_nothing_in_between(tmp_path):
    for i in range(50):
        add_flow(tmp_path, f"f{i}", 'schedule: "@hourly"\n')
    clock, engine, service = make(tmp_path, start=3_600.0 * 100 + 10)
    service.startService()
    clock.advance(0)
    engine.fired.clear()
    for _ in range(60):
        clock.advance(1)
    assert engine.fired == []
    clock.advance(3_600 - 70)
    assert len(engine.fired) == 50
    assert {upto for _, upto in engine.fired} == {3_600_000 * 101}
    service.stopService()


def test_edits_and_removals_are_seen_by_the_rescan(tmp_path):
    add_flow(tmp_path, "a", 'schedule: "@every 100s"\n')
    clock, engine, service = make(tmp_path, start=1_001.0)
    service.startService()
    clock.advance(0)
    assert service.next_at["a"] == 1_100_000
    (tmp_path / "a" / "flow.yaml").write_text('schedule: "@every 5s"\n')
    clock.advance(1)
    assert service.next_at["a"] == 1_005_000
    (tmp_path / "a" / "flow.yaml").write_text('schedule: "nonsense"\n')
    clock.advance(1)
    assert "a" not in service.next_at
    add_flow(tmp_path, "new", 'schedule: "@daily"\n')
    clock.advance(1)
    assert engine.fired[-1][0] == "new"
    service.stopService()


def test_a_busy_schedule_is_tried_again_shortly(tmp_path):
    add_flow(tmp_path, "a", 'schedule: "@every 60s"\n')
    clock, engine, service = make(tmp_path, start=1_019.0)
    service.startService()
    clock.advance(0)
    engine.fired.clear()
    engine.busy.add("a")
    clock.advance(1_020 - 1_019)
    assert engine.fired == [("a", 1_020_000)]
    assert service.next_at["a"] == 1_020_000 + BUSY_RETRY_MS
    clock.advance(BUSY_RETRY_MS / 1000)
    assert engine.fired[-1] == ("a", 1_020_000 + BUSY_RETRY_MS)
    assert service.next_at["a"] == 1_080_000
    service.stopService()


def test_a_flow_without_flow_sh_is_not_fired(tmp_path):
    add_flow(tmp_path, "a", 'schedule: "@every 10s"\n')
    (tmp_path / "a" / "flow.sh").unlink()
    clock, engine, service = make(tmp_path)
    service.startService()
    clock.advance(0)
    clock.advance(30)
    assert engine.fired == []
    service.stopService()


def test_flows_due_at_one_instant_fire_in_one_transaction(tmp_path):
    for i in range(30):
        add_flow(tmp_path, f"f{i:02d}", 'schedule: "@every 10s"\n')
    clock, engine, service = make(tmp_path, start=1_001.0)
    service.startService()
    clock.advance(0)
    engine.batches.clear()
    engine.fired.clear()
    clock.advance(9)
    assert engine.batches == [[f"f{i:02d}" for i in range(30)]]
    assert {upto for _, upto in engine.fired} == {1_010_000}
    assert set(service.next_at.values()) == {1_020_000}
    service.stopService()


def test_a_batch_that_fails_is_fired_flow_by_flow(tmp_path):
    for name in ("a", "b", "c"):
        add_flow(tmp_path, name, 'schedule: "@every 10s"\n')
    clock, engine, service = make(tmp_path, start=1_001.0)
    service.startService()
    clock.advance(0)
    engine.fired.clear()
    engine.batches.clear()
    engine.broken.add("b")
    clock.advance(9)
    assert engine.batches == [["a", "b", "c"], ["a"], ["b"], ["c"]]
    assert engine.fired == [("a", 1_010_000), ("c", 1_010_000)]
    # The others go on; the one in error is tried again a little later.
    assert service.next_at["a"] == service.next_at["c"] == 1_020_000
    assert service.next_at["b"] == 1_010_000 + ERROR_RETRY_MS
    service.stopService()
