"""
The C{maxq} command line: L{build_parser} and the argument types it checks.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from maxq.cli.client import DEFAULT_URL
from maxq.tap import LISTEN_HELP, SETTINGS


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def _positive(convert, kind: str, message: str):
    """
    An argparse type: C{convert(text)}, which must be above zero.
    """
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(message)
        return value

    return parse


_positive_int = _positive(int, "an integer", "must be a positive integer")
_seconds = _positive(float, "a number", "must be more than zero")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maxq",
        description="MaxQ: a DAG workflow engine for shell scripts.",
        epilog="Client commands talk to MAXQ_URL (default %s) and send "
        "MAXQ_API_KEY (the first key of a comma list) as a bearer token."
        % DEFAULT_URL,
    )
    parser.add_argument(
        "--json", action="store_true", default=False,
        help="print the API's JSON instead of tables",
    )
    parser.add_argument(
        "--url", default=None,
        help="server URL (overrides MAXQ_URL)",
    )
    # The same two options are accepted after the command too; SUPPRESS keeps
    # an absent one from overwriting what was given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of tables")
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help="server URL (overrides MAXQ_URL)")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser(
        "serve", help="run the server in the foreground",
        description="Run the server in the foreground (twistd --nodaemon, no "
        "pidfile, log to stdout).  Settings come from MAXQ_* variables; these "
        "options override them.",
    )
    for setting in SETTINGS:
        serve.add_argument(f"--{setting.option}", dest=setting.field,
                           default=None, help=setting.help)
    serve.add_argument("--listen", default=None, help=LISTEN_HELP)
    serve.add_argument("--reactor", default=None,
                       help="twistd reactor to install (e.g. epoll, poll)")

    migrate = commands.add_parser(
        "migrate", help="apply database migrations and exit",
        description="Bring the database schema up to date, print the schema "
        "version and exit.",
    )
    for option in ("flows-root", "sqlite-path", "database-url"):
        setting = next(s for s in SETTINGS if s.option == option)
        migrate.add_argument(f"--{option}", dest=setting.field, default=None,
                             help=setting.help)

    commands.add_parser("lib-path", help="print the path of maxq.sh")

    commands.add_parser("flows", parents=[common], help="list flows")

    run = commands.add_parser("run", parents=[common], help="trigger a run")
    run.add_argument("flow")
    run.add_argument("--input", type=_json_value, default=None,
                     help="the run's input, as JSON")
    run.add_argument("--metadata", type=_json_value, default=None,
                     help="the run's metadata, as a JSON object")
    run.add_argument("--idempotency-key", default=None,
                     help="return the existing run for a key already used")
    run.add_argument("--wait", action="store_true",
                     help="wait until the run completes or fails")
    run.add_argument("--timeout", type=_seconds, default=None,
                     help="with --wait: give up after this many seconds")
    run.add_argument("--follow", action="store_true",
                     help="with --wait: print step changes and output as they happen")

    events = commands.add_parser("events", parents=[common], help="show or follow events")
    events.add_argument("--run", default=None, help="only this run's events")
    events.add_argument("--flow", default=None, help="only this flow's events")
    events.add_argument("--type", default=None, help="a comma list of event types")
    events.add_argument("--after", type=int, default=None, help="events after this id")
    events.add_argument("--limit", type=_positive_int, default=None)
    events.add_argument("--follow", action="store_true",
                        help="stream events as they happen (Ctrl-C to stop)")

    output = commands.add_parser("output", parents=[common],
                                 help="print a step's (or flow.sh's) stored output")
    output.add_argument("run_id", metavar="RUN")
    output.add_argument("step", metavar="STEP", nargs="?", default=None,
                        help="the step id (none: flow.sh's output)")
    output.add_argument("--attempt", type=_positive_int, default=None)
    output.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    output.add_argument("--follow", action="store_true",
                        help="keep printing while the step runs")

    search = commands.add_parser("search", parents=[common],
                                 help="search log entries and output")
    search.add_argument("text")
    search.add_argument("--flow", default=None)
    search.add_argument("--run", default=None)
    search.add_argument("--limit", type=_positive_int, default=None)

    runs = commands.add_parser("runs", parents=[common], help="list runs")
    runs.add_argument("--status", default=None)
    runs.add_argument("--flow", default=None)
    runs.add_argument("--limit", type=_positive_int, default=None)

    for name, text in (
        ("show", "show a run, its stages and steps"),
        ("logs", "show a run's log entries"),
        ("abort", "abort a run"),
        ("retry", "retry a failed run"),
        ("pause", "pause a run"),
        ("resume", "resume a paused run"),
    ):
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("run_id", metavar="RUN")
        if name == "logs":
            sub.add_argument("--level", default=None)
            sub.add_argument("--limit", type=_positive_int, default=None)
    return parser
