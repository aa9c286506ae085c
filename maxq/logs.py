"""
The server's own log observers (SPEC §8): C{MAXQ_LOG_FORMAT=json} writes one
JSON object per line, C{{"time", "level", "logger", "message"}} plus
C{runId}, C{stepId} and C{flowName} when the event is about one; text lines
under systemd (C{JOURNAL_STREAM} set) start with a C{<N>} syslog priority,
so journald keeps the level.

Twisted's C{jsonFileLogObserver} writes record separators and the raw event
(format strings, every key), which log shippers do not expect: these
observers write what a reader wants.  Stdlib and C{twisted.logger} only.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

from twisted.logger import LogLevel, formatEvent

# syslog priorities (RFC 5424) of Twisted's levels.
PRIORITIES = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4,
              LogLevel.error: 3, LogLevel.critical: 2}
LEVELS = {LogLevel.debug: "debug", LogLevel.info: "info", LogLevel.warn: "warn",
          LogLevel.error: "error", LogLevel.critical: "critical"}
# The keys MaxQ's log calls use for what a line is about, as JSON names them.
CONTEXT = (
    ("runId", ("runId", "run_id")),
    ("stepId", ("stepId", "step_id")),
    ("flowName", ("flowName", "flow_name", "flow")),
)


def _real_stdout():
    """
    The process's own standard output: twistd redirects C{sys.stdout} into
    the log once logging begins, and an observer writing there would log
    its own lines forever.
    """
    return sys.__stdout__ or sys.stdout


def _message(event: dict) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            text = f"{text}\n{failure.getTraceback()}"
        except Exception:
            text = f"{text}\n{failure!r}"
    return text


def _time(event: dict) -> str:
    when = event.get("log_time")
    if when is None:
        when = datetime.datetime.now(datetime.timezone.utc).timestamp()
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _level(event: dict) -> LogLevel:
    level = event.get("log_level")
    if level is None:
        # Legacy twisted.python.log events: isError marks the errors.
        level = LogLevel.error if event.get("isError") else LogLevel.info
    return level


def json_record(event: dict) -> dict:
    """
    One log event as the JSON line shows it.
    """
    level = _level(event)
    record = {
        "time": _time(event),
        "level": LEVELS.get(level, level.name),
        "logger": event.get("log_namespace") or event.get("system") or "-",
        "message": _message(event),
    }
    for name, keys in CONTEXT:
        for key in keys:
            value = event.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                record[name] = value
                break
    return record


class JsonLineObserver:
    """
    Writes each event as one line of JSON to C{stream}.
    """

    def __init__(self, stream=None):
        self.stream = _real_stdout() if stream is None else stream

    def __call__(self, event: dict) -> None:
        stream = self.stream
        line = json.dumps(json_record(event), ensure_ascii=False, default=str)
        stream.write(line + "\n")
        stream.flush()


class TextLineObserver:
    """
    Plain text lines; with C{priorities}, each starts with the syslog
    priority journald reads (C{<6>} for info).
    """

    def __init__(self, stream=None, priorities: bool = False):
        self.stream = _real_stdout() if stream is None else stream
        self.priorities = priorities

    def __call__(self, event: dict) -> None:
        stream = self.stream
        level = _level(event)
        prefix = f"<{PRIORITIES.get(level, 6)}>" if self.priorities else f"{_time(event)} "
        namespace = event.get("log_namespace") or event.get("system") or "-"
        lines = _message(event).split("\n")
        stream.write("".join(f"{prefix}[{namespace}#{LEVELS.get(level, level.name)}] "
                             f"{line}\n" for line in lines))
        stream.flush()


def under_journald(environ=None) -> bool:
    return bool((os.environ if environ is None else environ).get("JOURNAL_STREAM"))


def json_observer():
    """
    twistd's C{--logger} factory for C{--log-format json}.
    """
    return JsonLineObserver()


def journal_observer():
    """
    twistd's C{--logger} factory for text under systemd.
    """
    return TextLineObserver(priorities=True)


def observer_factory(log_format: str, environ=None) -> str | None:
    """
    The twistd C{--logger} for a format (the factory's dotted name, which
    twistd imports), or None for Twisted's own text log (outside systemd).
    """
    if log_format == "json":
        return "maxq.logs.json_observer"
    if under_journald(environ):
        return "maxq.logs.journal_observer"
    return None
