"""
The commands that run here rather than through the API: C{serve} (the server
in the foreground through twistd) and C{migrate}.
"""

from __future__ import annotations

import argparse
import os
import sys

from maxq.cli.exits import EXIT_ERROR, EXIT_OK, EXIT_RUN_FAILED
from maxq.tap import SETTINGS


# -------------------------------------------------------------------- serve


def _serve_options_class():
    """
    twistd's L{ServerOptions} with the plugin list fixed to MaxQ's, so that
    C{maxq serve} works without twistd's plugin discovery (and so without
    C{dropin.cache} or a writable plugin directory).
    """
    from twisted.scripts.twistd import ServerOptions

    class MaxqServerOptions(ServerOptions):
        @staticmethod
        def _getPlugins(interface):
            from twisted.plugins.maxq_plugin import maxq_service_maker

            return [maxq_service_maker]

    return MaxqServerOptions


def twistd_arguments(args: argparse.Namespace) -> list[str]:
    """
    The twistd command line that C{maxq serve} amounts to: foreground, no
    pidfile (a leftover C{twistd.pid} would block the next start), log to
    stdout.
    """
    argv = ["--nodaemon", "--pidfile=", "--logfile=-"]
    if args.reactor:
        argv.append(f"--reactor={args.reactor}")
    argv.append("maxq")
    for setting in SETTINGS:
        value = getattr(args, setting.field)
        if value is not None:
            argv.append(f"--{setting.option}={value}")
    if args.listen is not None:
        argv.append(f"--listen={args.listen}")
    return argv


def serve(args: argparse.Namespace) -> int:
    from twisted.python import usage
    from twisted.scripts.twistd import runApp

    options = _serve_options_class()()
    try:
        options.parseOptions(twistd_arguments(args))
    except usage.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    runApp(options)
    service = getattr(options.subOptions, "service", None)
    if service is not None and getattr(service, "api_url", "") is None:
        # The reactor stopped because the server never came up.
        return EXIT_RUN_FAILED
    return EXIT_OK


# ------------------------------------------------------------------ migrate


async def migrate(reactor, args: argparse.Namespace) -> None:
    from maxq.config import Config, ConfigError
    from maxq.store import migrate as migrate_schema

    env = os.environ
    overrides = {
        "flows_root": args.flows_root,
        "sqlite_path": args.sqlite_path,
        "database_url": args.database_url,
    }
    # Migrating does not look at flows, so do not insist on a flows root.
    if not overrides["flows_root"] and not env.get("MAXQ_FLOWS_ROOT"):
        overrides["flows_root"] = os.getcwd()
    try:
        config = Config.from_env(env, **overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)
    version = await migrate_schema(config, reactor)
    print(f"schema version {version}")
