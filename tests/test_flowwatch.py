"""
FlowsWatch (maxq/flowwatch.py) on the real reactor and a real directory:
which flows changed since a serial, what it cannot vouch for, and the
schedules' rescan reading only the flows that changed.
"""

from __future__ import annotations

import os

from twisted.internet import reactor, task

from maxq.flows import FlowsRoot
from maxq.flowwatch import FlowsWatch


def add_flow(root, name, yaml='schedule: "@hourly"\n'):
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "flow.sh").write_text("#!/bin/sh\nexit 0\n")
    (d / "flow.sh").chmod(0o755)
    (d / "flow.yaml").write_text(yaml)


async def until(check, timeout_s=10.0):
    """
    Poll C{check()} until it is true (events arrive through the reactor).
    """
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    assert check()


async def test_only_the_flows_that_changed_are_named(tmp_path):
    for name in ("a", "b", "c"):
        add_flow(tmp_path, name)
    watch = FlowsWatch(str(tmp_path))
    assert watch.changed_since(0) is None  # not started: anything may have
    assert watch.start(reactor)
    try:
        seen = watch.serial
        assert watch.changed_since(seen) == set()
        (tmp_path / "b" / "flow.yaml").write_text('schedule: "@daily"\n')
        await until(lambda: watch.changed_since(seen))
        assert watch.changed_since(seen) == {"b"}
        seen = watch.serial
        # A file of the flow directory that is not the server's: nothing.
        (tmp_path / "c" / "notes.txt").write_text("x")
        add_flow(tmp_path, "new")
        await until(lambda: "new" in (watch.changed_since(seen) or ()))
        assert watch.changed_since(seen) == {"new"}
        seen = watch.serial
        (tmp_path / "new" / "flow.yaml").write_text("title: edited\n")
        (tmp_path / "a" / "flow.yaml").unlink()
        await until(lambda: watch.changed_since(seen) == {"a", "new"})
        seen = watch.serial
        os.rename(tmp_path / "c", tmp_path / "d")
        await until(lambda: watch.changed_since(seen) == {"c", "d"})
        seen = watch.serial
        (tmp_path / "d" / "flow.yaml").write_text("title: moved\n")
        await until(lambda: watch.changed_since(seen) == {"d"})
    finally:
        watch.stop()
    assert watch.changed_since(watch.serial) is None


async def test_a_linked_flow_yaml_is_always_named(tmp_path):
    add_flow(tmp_path, "common")
    add_flow(tmp_path, "a")
    (tmp_path / "a" / "flow.yaml").unlink()
    (tmp_path / "a" / "flow.yaml").symlink_to(tmp_path / "common" / "flow.yaml")
    watch = FlowsWatch(str(tmp_path))
    assert watch.start(reactor)
    try:
        # Its target may change without an event in its directory.
        assert watch.changed_since(watch.serial) == {"a"}
    finally:
        watch.stop()


async def test_serials_from_before_the_watch_began_tell_nothing(tmp_path):
    add_flow(tmp_path, "a")
    watch = FlowsWatch(str(tmp_path))
    before = watch.serial
    assert watch.start(reactor)
    try:
        assert watch.changed_since(before) is None
        assert watch.changed_since(watch.serial) == set()
    finally:
        watch.stop()


async def test_a_removed_root_makes_every_flow_looked_at(tmp_path):
    root = tmp_path / "flows"
    add_flow(root, "a")
    watch = FlowsWatch(str(root))
    assert watch.start(reactor)
    seen = watch.serial
    (root / "a" / "flow.yaml").unlink()
    (root / "a" / "flow.sh").unlink()
    (root / "a").rmdir()
    root.rmdir()
    await until(lambda: watch.changed_since(seen) is None)
    assert not watch.active


async def test_the_rescan_reads_only_changed_flows_while_watched(tmp_path):
    from maxq.firing import FiringService

    for i in range(20):
        add_flow(tmp_path, f"f{i:02d}")
    flows = FlowsRoot(tmp_path)

    class Engine:
        def fire_schedules(self, fires):
            from twisted.internet import defer
            return defer.succeed({name: {"busy": False} for name, _s, _u in fires})

    service = FiringService(Engine(), flows, reactor, rescan_s=0.05)
    read = []
    config = flows.config

    def counting(name):
        read.append(name)
        return config(name)

    flows.config = counting
    service.startService()
    try:
        await until(lambda: len(service.specs) == 20)
        await task.deferLater(reactor, 0.2, lambda: None)
        read.clear()
        await task.deferLater(reactor, 0.3, lambda: None)
        assert read == []  # several rescans, no flow.yaml read
        (tmp_path / "f03" / "flow.yaml").write_text('schedule: "@every 5s"\n')
        await until(lambda: service.next_at["f03"] != service.next_at["f04"])
        assert set(read) == {"f03"}
        (tmp_path / "f05" / "flow.yaml").unlink()
        await until(lambda: "f05" not in service.specs)
    finally:
        await service.stopService()
