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
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from urllib.parse import quote
from pathlib import Path
from typing import Any, Iterable, Sequence

from twisted.internet import defer, task

from maxq.tap import LISTEN_HELP, SETTINGS

DEFAULT_URL = "http://127.0.0.1:3000"
API_PREFIX = "/api/v1"
POLL_INTERVAL = 0.1
REQUEST_TIMEOUT = 30.0
TERMINAL = ("completed", "failed")

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_ERROR = 2
EXIT_UNREACHABLE = 3


def lib_path() -> Path:
    """
    The absolute path of the shell helpers scripts may source.
    """
    return (Path(__file__).resolve().parent / "lib" / "maxq.sh")


# ---------------------------------------------------------------- arguments


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than zero")
    return value


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


# ------------------------------------------------------------------- client


class ApiFailure(Exception):
    """
    The server answered with an error body (or something that is not JSON).
    """

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class Unreachable(Exception):
    """
    No answer from the server: refused, unknown host, reset or timed out.
    """


def server_url(args: argparse.Namespace, env=os.environ) -> str:
    """
    The server's base URL, from C{--url} or C{MAXQ_URL}.  A URL that already
    ends in C{/api/v1} is accepted too.
    """
    url = (getattr(args, "url", None) or env.get("MAXQ_URL") or DEFAULT_URL)
    url = url.rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)]
    return url


def api_key(env=os.environ) -> str | None:
    keys = [k.strip() for k in env.get("MAXQ_API_KEY", "").split(",") if k.strip()]
    return keys[0] if keys else None


class Client:
    """
    A small JSON client of the MaxQ API over one persistent connection pool.
    """

    def __init__(self, reactor, url: str, key: str | None = None,
                 timeout: float = REQUEST_TIMEOUT):
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.reactor = reactor
        self.url = url
        self.timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._http = HTTPClient(Agent(reactor, pool=self._pool))
        self._headers = {"Accept": ["application/json"]}
        if key:
            self._headers["Authorization"] = [f"Bearer {key}"]

    async def request(self, method: str, path: str, body: Any = None,
                      params: dict | None = None,
                      headers: dict[str, str] | None = None) -> Any:
        """
        Send one request to C{/api/v1<path>} and return the decoded JSON
        body; raise L{ApiFailure} for an error status, L{Unreachable} when
        the server does not answer.
        """
        from twisted.internet import error
        from twisted.web import _newclient

        extra = headers or {}
        headers = dict(self._headers)
        headers.update({k: [v] for k, v in extra.items()})
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = ["application/json"]
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            response = await self._http.request(
                method, self.url + API_PREFIX + path, params=query or None,
                headers=headers, data=data, reactor=self.reactor,
                timeout=self.timeout,
            )
            content = await response.content()
        except error.ConnectionRefusedError:
            raise Unreachable(
                f"cannot connect to MaxQ at {self.url}: connection refused "
                "(is the server running? set MAXQ_URL to point elsewhere)"
            ) from None
        except (error.ConnectError, error.DNSLookupError) as e:
            raise Unreachable(f"cannot connect to MaxQ at {self.url}: {e}") from None
        except defer.CancelledError:
            raise Unreachable(
                f"no answer from MaxQ at {self.url} within {self.timeout:g}s"
            ) from None
        except (_newclient.ResponseFailed, _newclient.RequestNotSent,
                _newclient.RequestTransmissionFailed) as e:
            raise Unreachable(f"connection to MaxQ at {self.url} failed: {e}") from None
        try:
            decoded = json.loads(content) if content else None
        except ValueError:
            decoded = None
        if response.code >= 400:
            if isinstance(decoded, dict) and "error" in decoded:
                raise ApiFailure(response.code, str(decoded["error"]),
                                 str(decoded.get("code", f"HTTP_{response.code}")))
            text = content.decode("utf-8", "replace").strip()[:200]
            raise ApiFailure(response.code, f"HTTP {response.code}: {text}",
                             f"HTTP_{response.code}")
        if decoded is None and content:
            raise ApiFailure(response.code, "the server's answer is not JSON",
                             "BAD_RESPONSE")
        return decoded

    async def close(self) -> None:
        await self._pool.closeCachedConnections()


async def run_client_command(reactor, args: argparse.Namespace) -> None:
    """
    Run one client command; turn failures into a message and an exit status.
    """
    client = Client(reactor, server_url(args), api_key())
    try:
        handler = CLIENT_COMMANDS[args.command]
        code = await handler(client, args)
    except ApiFailure as e:
        print(f"error: {e.message} ({e.code})", file=sys.stderr)
        code = EXIT_ERROR
    except Unreachable as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_UNREACHABLE
    finally:
        await client.close()
    if code:
        raise SystemExit(code)


def _q(segment: str) -> str:
    """
    Quote a user-given id as one path segment, so that it cannot reach
    another route.
    """
    return quote(segment, safe="")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _when(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _duration(start: Any, end: Any = None, ms: Any = None) -> str:
    if not isinstance(ms, (int, float)):
        if not isinstance(start, (int, float)) or not isinstance(end, (int, float)):
            return "-"
        ms = end - start
    if ms < 1000:
        return f"{int(ms)}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, seconds = divmod(int(ms // 1000), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """
    Left-aligned columns separated by two spaces, with an upper-case header.
    """
    cells = [[h.upper() for h in headers]]
    cells += [[_text(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in cells]
    return "\n".join(lines)


def _print_fields(pairs: Iterable[tuple[str, Any]]) -> None:
    pairs = list(pairs)
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        print(f"{key.ljust(width)}  {_text(value)}")


async def cmd_flows(client: Client, args) -> int:
    body = await client.request("GET", "/flows")
    if args.json:
        _print_json(body)
        return EXIT_OK
    flows = body.get("flows", [])
    if not flows:
        print("no flows")
        return EXIT_OK
    print(format_table(
        ["name", "steps", "schedule", "title"],
        [(f.get("name"), ", ".join(f.get("steps") or []) or "-",
          f.get("schedule"), f.get("title")) for f in flows],
    ))
    return EXIT_OK


async def cmd_run(client: Client, args) -> int:
    body: dict[str, Any] = {}
    if args.input is not None:
        body["input"] = args.input
    if args.metadata is not None:
        body["metadata"] = args.metadata
    headers = {}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    run = await client.request("POST", f"/flows/{_q(args.flow)}/runs", body,
                               headers=headers)
    run_id = run["id"]
    if not args.wait:
        if args.json:
            _print_json(run)
        else:
            print(run_id)
        return EXIT_OK
    if not args.json:
        print(run_id, flush=True)
    run = await wait_for_run(client, run_id, args.timeout)
    if run is None:
        print(f"error: run {run_id} did not finish within {args.timeout:g}s",
              file=sys.stderr)
        return EXIT_RUN_FAILED
    if args.json:
        _print_json(run)
    else:
        print(run["status"])
        if run["status"] != "completed" and run.get("error") is not None:
            print(f"error: {_text(run['error'])}", file=sys.stderr)
    return EXIT_OK if run["status"] == "completed" else EXIT_RUN_FAILED


async def wait_for_run(client: Client, run_id: str,
                       timeout: float | None) -> dict | None:
    """
    Poll the run until it is completed or failed; C{None} on timeout.
    """
    deadline = None if timeout is None else client.reactor.seconds() + timeout
    while True:
        run = await client.request("GET", f"/runs/{_q(run_id)}")
        if run.get("status") in TERMINAL:
            return run
        if deadline is not None and client.reactor.seconds() >= deadline:
            return None
        await task.deferLater(client.reactor, POLL_INTERVAL, lambda: None)


async def cmd_runs(client: Client, args) -> int:
    body = await client.request("GET", "/runs", params={
        "status": args.status, "flowName": args.flow, "limit": args.limit,
    })
    if args.json:
        _print_json(body)
        return EXIT_OK
    runs = body.get("runs", [])
    if not runs:
        print("no runs")
        return EXIT_OK
    print(format_table(
        ["id", "flow", "status", "created", "duration"],
        [(r.get("id"), r.get("flowName"), r.get("status"), _when(r.get("createdAt")),
          _duration(r.get("startedAt"), r.get("completedAt"), r.get("durationMs")))
         for r in runs],
    ))
    total = (body.get("pagination") or {}).get("total")
    if isinstance(total, int) and total > len(runs):
        print(f"({len(runs)} of {total} runs; use --limit for more)")
    return EXIT_OK


async def _all_steps(client: Client, run_id: str) -> list[dict]:
    """
    Every step of a run, page by page (the server caps a page's size).
    """
    steps: list[dict] = []
    while True:
        body = await client.request("GET", f"/runs/{_q(run_id)}/steps",
                                    params={"limit": 100, "offset": len(steps)})
        page = body.get("steps", [])
        steps.extend(page)
        total = (body.get("pagination") or {}).get("total")
        if not page or not isinstance(total, int) or len(steps) >= total:
            return steps


async def cmd_show(client: Client, args) -> int:
    run = await client.request("GET", f"/runs/{_q(args.run_id)}")
    if args.json:
        _print_json(run)
        return EXIT_OK
    steps = await _all_steps(client, args.run_id)
    fields = [
        ("run", run.get("id")),
        ("flow", run.get("flowName")),
        ("status", run.get("status")),
    ]
    for key in ("name", "description", "terminationReason"):
        if run.get(key):
            fields.append((key, run[key]))
    fields += [
        ("created", _when(run.get("createdAt"))),
        ("started", _when(run.get("startedAt"))),
        ("completed", _when(run.get("completedAt"))),
        ("duration", _duration(run.get("startedAt"), run.get("completedAt"),
                               run.get("durationMs"))),
    ]
    for key in ("input", "output", "metadata", "error"):
        if run.get(key) not in (None, {}, ""):
            fields.append((key, run[key]))
    _print_fields(fields)
    stages = run.get("stages") or []
    if stages:
        print()
        print(format_table(
            ["stage", "status", "final", "created", "completed"],
            [(s.get("name"), s.get("status"), s.get("final"),
              _when(s.get("createdAt")), _when(s.get("completedAt")))
             for s in stages],
        ))
    if steps:
        print()
        print(format_table(
            ["step", "name", "stage", "status", "retries", "exit", "duration"],
            [(s.get("id"), s.get("name"), s.get("stage"), s.get("status"),
              s.get("retryCount"), s.get("exitCode"),
              _duration(s.get("startedAt"), s.get("completedAt"),
                        s.get("durationMs")))
             for s in steps],
        ))
    for stream in ("stdout", "stderr"):
        text = run.get(stream)
        if text:
            print(f"\nflow {stream}:")
            print(text.rstrip("\n"))
    return EXIT_OK


async def cmd_logs(client: Client, args) -> int:
    body = await client.request("GET", f"/runs/{_q(args.run_id)}/logs", params={
        "level": args.level, "limit": args.limit,
    })
    if args.json:
        _print_json(body)
        return EXIT_OK
    entries = body.get("logs", []) if isinstance(body, dict) else body
    if not entries:
        print("no log entries")
        return EXIT_OK
    # The API answers newest first; a log reads best oldest first.
    for entry in reversed(entries):
        when = entry.get("createdAt", entry.get("timestamp"))
        entity = entry.get("entityType") or "-"
        if entry.get("entityId"):
            entity += f":{entry['entityId']}"
        print(f"{_when(when)}  {str(entry.get('level', '-')).ljust(5)}  "
              f"{entity}  {entry.get('message', '')}")
    return EXIT_OK


def _action(verb: str):
    async def command(client: Client, args) -> int:
        body = await client.request("POST", f"/runs/{_q(args.run_id)}/{verb}", {})
        if args.json:
            _print_json(body)
            return EXIT_OK
        message = body.get("message") if isinstance(body, dict) else None
        run = body.get("run") if isinstance(body, dict) else None
        if run is None and isinstance(body, dict) and "status" in body:
            run = body
        if message:
            print(message)
        elif run is not None:
            print(f"run {run.get('id', args.run_id)}: {run.get('status')}")
        else:
            print(f"{verb}: ok")
        if verb == "abort" and isinstance(body, dict) and "processesKilled" in body:
            print(f"processes killed: {body['processesKilled']}")
        return EXIT_OK

    command.__name__ = f"cmd_{verb}"
    return command


CLIENT_COMMANDS = {
    "flows": cmd_flows,
    "run": cmd_run,
    "runs": cmd_runs,
    "show": cmd_show,
    "logs": cmd_logs,
    "abort": _action("abort"),
    "retry": _action("retry"),
    "pause": _action("pause"),
    "resume": _action("resume"),
}


if __name__ == "__main__":
    sys.exit(main())
