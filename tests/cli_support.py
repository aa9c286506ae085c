"""
Running the C{maxq} command as a real subprocess from reactor-driven tests
(this module holds no tests).

The command is run with L{getProcessOutputAndValue}, so the reactor keeps
serving the in-process server the command talks to while it runs; a blocking
C{subprocess.run} would deadlock against that server.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.utils import getProcessOutputAndValue

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    out: str
    err: str
    code: int

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def cli_env(url: str | None, api_key: str | None = None, **extra) -> dict:
    """
    The server's environment minus MaxQ settings, pointing at C{url}.
    (An explicit env is needed: Twisted's default child env is empty.)
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAXQ_")}
    if url is not None:
        env["MAXQ_URL"] = url
    if api_key is not None:
        env["MAXQ_API_KEY"] = api_key
    env.update(extra)
    return env


async def run_cli(reactor, *args: str, url: str | None = None,
                  api_key: str | None = None, env: dict | None = None,
                  timeout: float = 60.0) -> CliResult:
    """
    Run C{python -m maxq.cli ARGS} and collect its output and exit status.
    """
    if env is None:
        env = cli_env(url, api_key)
    d = getProcessOutputAndValue(
        sys.executable, ["-m", "maxq.cli", *args], env=env, path=str(ROOT),
        reactor=reactor,
    )
    d.addTimeout(timeout, reactor)
    out, err, code = await d
    return CliResult(out.decode("utf-8", "replace"),
                     err.decode("utf-8", "replace"), code)
