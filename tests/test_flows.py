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


def test_flow_yaml_errors_are_shown_and_reread_when_the_file_changes(tmp_path):
    from maxq import flowconfig
    flow = tmp_path / "f"
    flow.mkdir()
    script = flow / "flow.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (flow / "flow.yaml").write_text("title: [unclosed\n")
    flows = FlowsRoot(tmp_path)
    info = flows.describe("f")
    assert info["configError"].startswith("flow.yaml cannot be read")
    (flow / "flow.yaml").write_text("- a list\n")
    assert flows.config("f").error == "flow.yaml must be a mapping of keys to values"
    (flow / "flow.yaml").write_text("title: Fine\nschedule: ['@daily', '@hourly']\n")
    assert flows.describe("f") == {"name": "f", "path": str(flow.resolve()), "steps": [],
                                   "title": "Fine", "schedule": ["@daily", "@hourly"]}

    def bad(raw):
        raise flowconfig.BadConfig(f"priority must be an integer, not {raw['title']!r}")

    config = flowconfig.parse({"title": "x"}, [("limits", bad), ("ok", lambda raw: {"a": 1})])
    assert config.error == "priority must be an integer, not 'x'"
    assert config.section("limits") == {} and config.section("ok") == {"a": 1}
