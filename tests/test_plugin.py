"""
The twistd plugin as users meet it: C{twistd --help} lists C{maxq} (under the
editable install the tests run from, and, in a slow test, under a regular
install), C{twistd maxq --help} shows its options, and the modules twistd
loads while parsing options never import the reactor.

These run real subprocesses with C{subprocess}: they are plain synchronous
tests, with no reactor running in them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from maxq.tap import SETTINGS

ROOT = Path(__file__).resolve().parent.parent


def twistd_command(python: str = sys.executable) -> list[str]:
    """
    The twistd script next to C{python} or, failing that, the same entry
    point through C{python -c}.
    """
    script = Path(python).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [python, "-c", "from twisted.scripts.twistd import run; run()"]


def run(argv, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


def test_no_twisted_plugins_init():
    """
    A twisted/plugins/__init__.py of ours would replace Twisted's own on a
    regular install and hide every other plugin.
    """
    assert (ROOT / "twisted" / "plugins" / "maxq_plugin.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "__init__.py").exists()


def test_twistd_help_lists_maxq(tmp_path):
    result = run(twistd_command() + ["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:1] == ["maxq"] for line in result.stdout.splitlines()), \
        result.stdout


def test_twistd_maxq_help_lists_options(tmp_path):
    result = run(twistd_command() + ["-n", "maxq", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for setting in SETTINGS:
        assert f"--{setting.option}=" in result.stdout
    assert "--listen=" in result.stdout


def test_twistd_maxq_chosen_reactor(tmp_path):
    """
    C{--reactor} works: nothing imported while twistd parses options
    installed the default reactor first.
    """
    result = run(twistd_command() + ["--reactor=poll", "-n", "maxq", "--help"],
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "already installed" not in result.stderr


def test_twistd_maxq_bad_option(tmp_path):
    env = dict(os.environ, MAXQ_FLOWS_ROOT=str(tmp_path))
    result = run(twistd_command() + ["-n", "--pidfile=", "maxq", "--port=http"],
                 cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "--port must be an integer" in result.stdout + result.stderr
    assert not (tmp_path / "twistd.pid").exists()


def test_plugin_and_tap_do_not_import_the_reactor(tmp_path):
    code = (
        "import sys\n"
        "import twisted.plugins.maxq_plugin as p\n"
        "import maxq.tap, maxq.cli\n"
        "opts = p.maxq_service_maker.options\n"
        "assert opts is maxq.tap.Options, opts\n"
        "bad = [m for m in ('twisted.internet.reactor', 'klein', 'maxq.service')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    result = run([sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


slow = pytest.mark.skipif(
    not (os.environ.get("MAXQ_SLOW_TESTS") == "1"
         or os.environ.get("CI", "").lower() == "true"),
    reason="regular install takes ~30 s; set MAXQ_SLOW_TESTS=1 (CI=true runs it)",
)


@pytest.mark.slow
@slow
def test_regular_install_finds_plugin(tmp_path):
    """
    C{pip install .} (not editable) into a fresh virtualenv: the plugin, the
    shell library and the migrations are installed, and twistd lists maxq
    from outside the source tree.
    """
    # Install from a copy, so the build leaves no build/ or egg-info behind in
    # the work tree (and stale files there cannot leak into the wheel).
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
        ".pytest_cache", "dropin.cache", "data", "_trial_temp"))
    # The virtualenv gets no pip of its own: this interpreter's pip installs
    # into it (--python), which spares the seconds of CPU that ensurepip
    # spends unpacking and compiling pip; --no-compile likewise skips the
    # byte-compiling of every dependency, which nothing here looks at.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    result = run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                  "--no-compile", str(source)],
                 cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    result = run(twistd_command(str(python)) + ["--help"], cwd=outside, env=env)
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:1] == ["maxq"] for line in result.stdout.splitlines()), \
        result.stdout

    code = (
        "import maxq, maxq.cli, pathlib, sys\n"
        "print(maxq.__file__)\n"
        "print(maxq.cli.lib_path().is_file())\n"
        "print(sys.prefix)\n"
    )
    result = run([str(python), "-c", code], cwd=outside, env=env)
    assert result.returncode == 0, result.stderr
    package_file, lib_ok, prefix = result.stdout.split()
    assert str(ROOT) not in package_file
    assert str(source) not in package_file
    assert lib_ok == "True"
    for sql in (ROOT / "sql").glob("*/*.sql"):
        installed = Path(prefix) / "share" / "maxq" / "sql" / sql.parent.name / sql.name
        assert installed.is_file(), installed

    result = run([str(env_dir / "bin" / "maxq"), "lib-path"], cwd=outside, env=env)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_file()
