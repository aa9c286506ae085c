"""
The suite's guard against a test that never ends (tests/conftest.py): an
async test still waiting past its limit fails, naming where it waited, and
the tests after it run.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HANGING = '''
from twisted.internet import defer

import tests.conftest

tests.conftest.ASYNC_TEST_LIMIT_S = 0.5


async def wait_forever():
    await defer.Deferred()


async def test_hangs():
    await wait_forever()


async def test_after_it():
    await defer.succeed(None)
'''


def test_a_hanging_async_test_fails_where_it_waits_and_the_run_goes_on(tmp_path):
    (tmp_path / "test_hanging.py").write_text(HANGING)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_hanging.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    out = done.stdout
    assert done.returncode == 1, out
    assert "1 failed, 1 passed" in out
    assert "the test was still waiting after 0.5 s, at" in out
    assert "in test_hangs" in out
    assert "in wait_forever" in out
