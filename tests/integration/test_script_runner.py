"""
L{maxq.process.ScriptRunner} on the real reactor with real scripts: the
script runs in its directory and its own process group, and the server's
own working directory is the same after every spawn, failed or not.
"""

from __future__ import annotations

import os

import pytest

from maxq.process import ScriptRunner

from .exec_support import timed


def _script(path, body: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def runner(reactor):
    r = ScriptRunner(reactor, grace_ms=500, drain_ms=500)
    yield r
    r.close()


@timed(20)
async def test_script_runs_in_its_directory_and_own_group(runner, tmp_path):
    here = os.getcwd()
    script = _script(tmp_path / "a b" / "step.sh",
                     'read -r _ _ _ _ pgid _ < /proc/$$/stat\necho "$(pwd -P) $$ $pgid"\n')
    handle = runner.spawn(script, script.parent, {"PATH": os.environ["PATH"]})
    assert os.getcwd() == here
    result = await handle.done
    assert result.exit_code == 0, result.stderr
    cwd, pid, pgid = result.stdout.rsplit(maxsplit=2)
    assert cwd == str((tmp_path / "a b").resolve())
    assert int(pid) == int(pgid) == handle.pid
    assert os.getcwd() == here


@timed(20)
async def test_failed_spawn_leaves_the_working_directory_alone(runner, tmp_path):
    here = os.getcwd()
    script = _script(tmp_path / "gone" / "step.sh", "exit 0\n")
    with pytest.raises(OSError):
        runner.spawn(script, tmp_path / "missing", {})
    assert os.getcwd() == here
    assert not runner.running
