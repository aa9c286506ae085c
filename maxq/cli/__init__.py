"""
The C{maxq} command.

C{maxq serve} runs the server in the foreground through twistd (the same
L{maxq.tap} options as C{twistd -n maxq}), C{maxq migrate} brings the schema
up to date, and the other commands are an HTTP client of a running server
(C{MAXQ_URL}, default C{http://127.0.0.1:3000}; C{MAXQ_API_KEY} for the bearer
token).

Exit status: 0 on success; 1 when C{run --wait} ends on anything but
C{completed}; 2 for bad usage or an error answered by the API; 3 when the
server cannot be reached.

Nothing here imports the reactor at module level: C{serve} lets twistd
install it (possibly one chosen with C{--reactor}), and the client commands
get it from L{task.react}.

The parts: L{maxq.cli.arguments} (the command line), L{maxq.cli.local}
(C{serve}, C{migrate}), L{maxq.cli.client} (the HTTP client),
L{maxq.cli.commands} (the client commands), L{maxq.cli.render} (tables and
other output) and L{maxq.cli.exits} (exit statuses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from twisted.internet import defer, task

from maxq.cli.arguments import build_parser
from maxq.cli.client import (
    API_PREFIX, DEFAULT_URL, REQUEST_TIMEOUT, ApiFailure, Client, Unreachable,
    api_key, server_url,
)
from maxq.cli.commands import CLIENT_COMMANDS, run_client_command
from maxq.cli.exits import EXIT_ERROR, EXIT_OK, EXIT_RUN_FAILED, EXIT_UNREACHABLE
from maxq.cli.local import migrate, serve, twistd_arguments
from maxq.cli.render import format_table

__all__ = [
    "API_PREFIX", "DEFAULT_URL", "REQUEST_TIMEOUT", "CLIENT_COMMANDS",
    "EXIT_ERROR", "EXIT_OK", "EXIT_RUN_FAILED", "EXIT_UNREACHABLE",
    "ApiFailure", "Client", "Unreachable", "api_key", "build_parser",
    "format_table", "lib_path", "main", "migrate", "run_client_command",
    "serve", "server_url", "twistd_arguments",
]


def lib_path() -> Path:
    """
    The absolute path of the shell helpers scripts may source.
    """
    return (Path(__file__).resolve().parents[1] / "lib" / "maxq.sh")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "lib-path":
        print(lib_path())
        return EXIT_OK
    if args.command == "serve":
        return serve(args)
    if args.command == "migrate":
        task.react(lambda reactor: defer.ensureDeferred(migrate(reactor, args)))
    task.react(
        lambda reactor: defer.ensureDeferred(run_client_command(reactor, args))
    )
    return EXIT_OK  # not reached: react() exits
