"""
twistd integration: the command-line L{Options} of C{twistd maxq} (and of
C{maxq serve}) and L{makeService}.

Every setting comes from the environment (SPEC section 4); an option given on
the command line wins over its variable.  Options default to C{None} so that
an absent option never hides the environment.

This module must stay cheap to import and must not import the reactor: twistd
loads it while parsing options, before it installs the reactor asked for with
C{--reactor}.  The reactor and the server are imported inside L{makeService}.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

from twisted.python import usage

from maxq.config import Config, ConfigError


def _integer(option: str) -> Callable[[str], int]:
    """
    A coercer for an integer option whose error names the option (twistd
    prints only the coercer's message).
    """

    def coerce(value: str) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"--{option} must be an integer, not {value!r}") from None

    return coerce


class Setting(NamedTuple):
    """
    One server setting that may be given on the command line.  The table of
    these is shared with C{maxq serve}, so both accept the same options.
    """

    option: str
    field: str
    coerce: Callable[[str], object]
    help: str


def _setting(option: str, kind: str, help: str) -> Setting:
    field = option.replace("-", "_")
    coerce = {"int": _integer(option), "path": Path, "str": str}[kind]
    return Setting(option, field, coerce, help)


SETTINGS: tuple[Setting, ...] = (
    _setting("flows-root", "path",
             "Flows directory (MAXQ_FLOWS_ROOT, required)."),
    _setting("sqlite-path", "path",
             "SQLite database file (MAXQ_SQLITE_PATH, default ./data/maxq.db)."),
    _setting("database-url", "str",
             "postgresql:// URL; selects PostgreSQL (MAXQ_DATABASE_URL)."),
    _setting("port", "int",
             "TCP port of the API (MAXQ_PORT, default 3000; 0 picks one)."),
    _setting("host", "str",
             "Interface the API listens on (MAXQ_HOST, default 127.0.0.1)."),
    _setting("scheduler-interval-ms", "int",
             "Safety-net poll interval of the scheduler "
             "(MAXQ_SCHEDULER_INTERVAL_MS, default 200)."),
    _setting("scheduler-batch-size", "int",
             "Steps claimed per scheduler pass (MAXQ_SCHEDULER_BATCH_SIZE, "
             "default 10)."),
    _setting("max-concurrent-steps", "int",
             "Steps running at once on this server (MAXQ_MAX_CONCURRENT_STEPS, "
             "default 10)."),
    _setting("abort-grace-ms", "int",
             "Grace between SIGTERM and SIGKILL (MAXQ_ABORT_GRACE_MS, "
             "default 5000)."),
    _setting("max-log-capture", "int",
             "Bytes kept of each output stream (MAXQ_MAX_LOG_CAPTURE, "
             "default 65536)."),
    _setting("api-url", "str",
             "Base URL handed to scripts as MAXQ_API (MAXQ_API_URL, default "
             "derived from where the server listens)."),
    _setting("worker-id", "str",
             "This server's identity among several (MAXQ_WORKER_ID, default "
             "host:pid)."),
    _setting("log-format", "str",
             "text or json: one JSON object per line (MAXQ_LOG_FORMAT, default "
             "text)."),
)

LISTEN_HELP = (
    "A Twisted server endpoint description to listen on instead of "
    "--host/--port, e.g. 'systemd:domain=INET:index=0' under systemd socket "
    "activation or 'tcp:8080:interface=0.0.0.0'."
)


class Options(usage.Options):
    """
    Options of C{twistd maxq}.  After parsing, C{self.config} is the
    validated L{Config} and C{self["listen"]} the optional endpoint
    description.

    @ivar env: the environment settings are read from; a parameter so that
        tests need not touch C{os.environ}.
    """

    synopsis = "[options]"
    longdesc = (
        "Run the MaxQ server.  Settings are read from MAXQ_* environment "
        "variables; the options below override them."
    )

    optParameters = [
        [s.option, None, None, s.help, s.coerce] for s in SETTINGS
    ] + [["listen", None, None, LISTEN_HELP]]

    def __init__(self, env: Mapping[str, str] | None = None):
        super().__init__()
        self.env = os.environ if env is None else env
        self.config: Config | None = None

    def postOptions(self) -> None:
        overrides = {s.field: self[s.option] for s in SETTINGS}
        try:
            self.config = Config.from_env(self.env, **overrides)
        except ConfigError as e:
            raise usage.UsageError(self._name_options(str(e))) from None
        listen = self["listen"]
        if listen is not None and not listen.strip():
            raise usage.UsageError("--listen needs an endpoint description")
        self._choose_log_observer()

    def _choose_log_observer(self) -> None:
        """
        Under twistd, log as C{--log-format} says (and with syslog
        priorities under systemd) unless C{--logger} chose an observer.
        """
        from maxq.logs import observer_factory

        parent = getattr(self, "parent", None)
        factory = observer_factory(self.config.log_format, self.env)
        if factory is not None and parent is not None and not parent.get("logger"):
            parent["logger"] = factory

    def _name_options(self, message: str) -> str:
        """
        L{Config} names the environment variable in its errors; when the
        value came from an option, name the option instead.
        """
        for s in SETTINGS:
            if self[s.option] is not None:
                message = message.replace(f"MAXQ_{s.field.upper()}", f"--{s.option}")
        return message


def makeService(options: Options):
    """
    Build the server for twistd.  The reactor is imported here, not at module
    level, so that the one twistd installed (possibly chosen with
    C{--reactor}) is the one used.
    """
    from twisted.internet import reactor

    from maxq.service import build_service

    if options["listen"]:
        service = build_service(
            options.config, reactor, endpoint_description=options["listen"]
        )
    else:
        service = build_service(options.config, reactor)
    listening = getattr(service, "listening", None)
    if listening is not None:
        listening.addErrback(_stop_when_start_fails, reactor)
    # Under twistd the first SIGTERM starts a graceful stop; a second one
    # makes it immediate.
    service.handle_signals = True
    options.service = service
    return service


def _stop_when_start_fails(failure, reactor) -> None:
    """
    A server that cannot start (port taken, database not migratable) ends the
    process instead of idling with no API.  The service has logged the
    failure already.  twistd starts services before it runs the reactor, so
    the failure may come before the reactor runs: stop it once it does.
    """

    def stop():
        from twisted.internet.error import ReactorNotRunning

        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    reactor.callWhenRunning(stop)
