"""
L{maxq.flows.FlowsRoot}: scripts are resolved at most once per cache period,
and changes are seen once it has passed.
"""

from __future__ import annotations

import os

from maxq.flows import FlowsRoot


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _script(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/bash\nexit 0\n")
    path.chmod(0o755)
    return path


def test_step_script_is_cached_for_the_period(tmp_path):
    clock = Clock()
    flows = FlowsRoot(tmp_path, monotonic=clock, cache_s=1.0)
    script = _script(tmp_path / "f" / "steps" / "s" / "step.sh")
    assert flows.step_script("f", "s") == script.resolve()
    script.unlink()
    clock.now += 0.5
    assert flows.step_script("f", "s") == script.resolve()
    clock.now += 0.6
    assert flows.step_script("f", "s") is None


def test_a_missing_script_is_seen_once_the_period_passed(tmp_path):
    clock = Clock()
    flows = FlowsRoot(tmp_path, monotonic=clock, cache_s=1.0)
    assert flows.flow_script("f") is None
    script = _script(tmp_path / "f" / "flow.sh")
    assert flows.flow_script("f") is None
    clock.now += 1.0
    assert flows.flow_script("f") == script.resolve()


def test_cached_answers_keep_the_root_rules(tmp_path):
    clock = Clock()
    root = tmp_path / "root"
    outside = _script(tmp_path / "elsewhere" / "step.sh")
    (root / "f" / "steps").mkdir(parents=True)
    os.symlink(outside.parent, root / "f" / "steps" / "s")
    flows = FlowsRoot(root, monotonic=clock)
    assert flows.step_script("f", "s") is None
    assert flows.step_script("f", "s") is None
    assert flows.step_script("f", "../x") is None
