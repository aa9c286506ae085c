"""
L{maxq.cli}: argument parsing, the C{serve} wiring into twistd, output
formatting, and the HTTP client's exit statuses against a scripted stub
server (the real server is exercised in C{tests/integration/test_cli.py}).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web import resource, server

from maxq import cli
from maxq.cli import local, render
from maxq.tap import SETTINGS
from tests.cli_support import run_cli

# ----------------------------------------------------------------- parsing


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_parse_requires_a_command(capsys):
    with pytest.raises(SystemExit) as info:
        parse()
    assert info.value.code == 2


def test_parse_run():
    args = parse("run", "hello", "--input", '{"n": 1}', "--wait", "--timeout", "2.5")
    assert args.command == "run"
    assert args.flow == "hello"
    assert args.input == {"n": 1}
    assert args.wait is True
    assert args.timeout == 2.5
    assert args.json is False


def test_parse_run_defaults():
    args = parse("run", "hello")
    assert args.input is None
    assert args.wait is False
    assert args.timeout is None
    assert args.idempotency_key is None


def test_parse_run_bad_input_json(capsys):
    with pytest.raises(SystemExit) as info:
        parse("run", "hello", "--input", "{nope")
    assert info.value.code == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ("--json", "runs"), ("runs", "--json"),
])
def test_parse_json_before_or_after_command(argv):
    assert parse(*argv).json is True


def test_parse_url_before_or_after_command():
    assert parse("--url", "http://a:1", "flows").url == "http://a:1"
    assert parse("flows", "--url", "http://b:2").url == "http://b:2"
    assert parse("flows").url is None


def test_parse_runs_filters():
    args = parse("runs", "--status", "failed", "--flow", "etl", "--limit", "5")
    assert (args.status, args.flow, args.limit) == ("failed", "etl", 5)


@pytest.mark.parametrize("limit", ["0", "-3", "many"])
def test_parse_runs_bad_limit(limit):
    with pytest.raises(SystemExit):
        parse("runs", "--limit", limit)


@pytest.mark.parametrize("command", ["show", "logs", "abort", "retry", "pause", "resume",
                                     "notifications"])
def test_parse_run_commands(command):
    args = parse(command, "0f8fad5b-d9cb-469f-a165-70867728950e")
    assert args.command == command
    assert args.run_id == "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_parse_serve_accepts_every_tap_option():
    argv = ["serve"]
    for setting in SETTINGS:
        argv += [f"--{setting.option}", "1"]
    args = parse(*argv, "--listen", "tcp:0")
    for setting in SETTINGS:
        assert getattr(args, setting.field) == "1"
    assert args.listen == "tcp:0"


def test_lib_path(capsys):
    assert cli.main(["lib-path"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.is_absolute()
    assert path.parts[-3:] == ("maxq", "lib", "maxq.sh")
    assert path.is_file()


# -------------------------------------------------------------------- serve


def test_twistd_arguments_foreground_no_pidfile():
    args = parse("serve", "--port", "0", "--flows-root", "/srv/flows")
    assert cli.twistd_arguments(args) == [
        "--nodaemon", "--pidfile=", "--logfile=-", "maxq",
        "--flows-root=/srv/flows", "--port=0",
    ]


def test_twistd_arguments_reactor_and_listen():
    args = parse("serve", "--reactor", "epoll", "--listen",
                 "systemd:domain=INET:index=0")
    argv = cli.twistd_arguments(args)
    assert argv.index("--reactor=epoll") < argv.index("maxq")
    assert argv[-1] == "--listen=systemd:domain=INET:index=0"


def test_serve_options_inject_plugin(monkeypatch, tmp_path):
    """
    C{maxq serve} hands twistd the MaxQ plugin directly (no plugin scan), and
    the tap options parse as under C{twistd maxq}.
    """
    from twisted.plugins.maxq_plugin import maxq_service_maker

    monkeypatch.setenv("MAXQ_FLOWS_ROOT", str(tmp_path))
    options = local._serve_options_class()()
    options.parseOptions(cli.twistd_arguments(parse("serve", "--port", "0")))
    assert options.loadedPlugins == {"maxq": maxq_service_maker}
    assert options.subCommand == "maxq"
    assert options["nodaemon"]
    assert options["pidfile"] == ""
    assert options.subOptions.config.port == 0
    assert options.subOptions.config.flows_root == tmp_path.resolve()


def test_serve_bad_option_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MAXQ_FLOWS_ROOT", str(tmp_path))
    assert cli.main(["serve", "--port", "eighty"]) == 2
    assert "--port must be an integer" in capsys.readouterr().err


def test_serve_missing_flows_root_exits_2(monkeypatch, capsys):
    monkeypatch.delenv("MAXQ_FLOWS_ROOT", raising=False)
    assert cli.main(["serve"]) == 2
    assert "MAXQ_FLOWS_ROOT" in capsys.readouterr().err


# ------------------------------------------------------------------ helpers


@pytest.mark.parametrize("given, expected", [
    (None, "http://127.0.0.1:3000"),
    ("http://maxq:8080", "http://maxq:8080"),
    ("http://maxq:8080/", "http://maxq:8080"),
    ("http://maxq:8080/api/v1", "http://maxq:8080"),
    ("http://maxq:8080/api/v1/", "http://maxq:8080"),
])
def test_server_url_from_environment(given, expected):
    env = {} if given is None else {"MAXQ_URL": given}
    assert cli.server_url(argparse.Namespace(url=None), env) == expected


def test_server_url_option_wins():
    env = {"MAXQ_URL": "http://env:1"}
    assert cli.server_url(argparse.Namespace(url="http://opt:2"), env) == "http://opt:2"


@pytest.mark.parametrize("given, expected", [
    ("", None), ("k1", "k1"), (" k1 , k2", "k1"), (",k2", "k2"),
])
def test_api_key_first_of_list(given, expected):
    assert cli.api_key({"MAXQ_API_KEY": given}) == expected
    assert cli.api_key({}) is None


def test_format_table():
    text = cli.format_table(["id", "status"], [("a", "running"), ("bbbb", None)])
    assert text.splitlines() == [
        "ID    STATUS",
        "a     running",
        "bbbb  -",
    ]


@pytest.mark.parametrize("start, end, ms, expected", [
    (None, None, None, "-"),
    (1000, None, None, "-"),
    (1000, 1250, None, "250ms"),
    (0, 0, 4200, "4.2s"),
    (0, 125_000, None, "2m05s"),
    (0, 3_725_000, None, "1h02m"),
])
def test_duration(start, end, ms, expected):
    assert render.format_duration(start, end, ms) == expected


# ------------------------------------------------- client against a stub API


class StubApi(resource.Resource):
    """
    Answers from a script: C{routes[(method, path)]} is a list of
    C{(status, body)} answers, used in turn (the last one repeats).  Records
    every request.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.routes: dict[tuple[str, str], list] = {}
        self.requests: list[dict] = []

    def answer(self, method, path, *answers):
        self.routes[(method, path)] = list(answers)

    def render(self, request):
        method = request.method.decode()
        path = request.path.decode()
        body = request.content.read()
        self.requests.append({
            "method": method, "path": path,
            "args": {k.decode(): v[0].decode() for k, v in request.args.items()},
            "auth": request.getHeader("authorization"),
            "idempotency": request.getHeader("idempotency-key"),
            "body": json.loads(body) if body else None,
        })
        answers = self.routes.get((method, path))
        if not answers:
            status, payload = 404, {"error": "no route", "code": "NOT_FOUND",
                                    "details": {}}
        else:
            status, payload = answers.pop(0) if len(answers) > 1 else answers[0]
        request.setResponseCode(status)
        if isinstance(payload, bytes):
            request.setHeader("content-type", "text/html")
            return payload
        request.setHeader("content-type", "application/json")
        return json.dumps(payload).encode()


@pytest_twisted.async_yield_fixture()
async def stub(reactor):
    api = StubApi()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        server.Site(api))
    api.url = f"http://127.0.0.1:{port.getHost().port}"
    yield api
    await port.stopListening()


RUN = {"id": "r-1", "flowName": "hello", "status": "pending", "createdAt": 0}


async def test_flows_table(stub, reactor):
    stub.answer("GET", "/api/v1/flows", (200, {"flows": [
        {"name": "etl", "path": "/f/etl", "steps": ["load", "fetch"],
         "title": "Nightly ETL", "schedule": "0 2 * * *"},
        {"name": "hello", "path": "/f/hello", "steps": []},
    ]}))
    result = await run_cli(reactor, "flows", url=stub.url)
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0].split() == ["NAME", "STEPS", "SCHEDULE", "TITLE"]
    assert lines[1].startswith("etl ")
    assert "load, fetch" in lines[1] and "Nightly ETL" in lines[1]
    assert lines[2].split()[0] == "hello"


async def test_flows_json(stub, reactor):
    body = {"flows": [{"name": "etl", "path": "/f/etl", "steps": []}]}
    stub.answer("GET", "/api/v1/flows", (200, body))
    result = await run_cli(reactor, "--json", "flows", url=stub.url)
    assert result.code == 0, result
    assert json.loads(result.out) == body


async def test_sends_first_api_key_as_bearer(stub, reactor):
    stub.answer("GET", "/api/v1/flows", (200, {"flows": []}))
    result = await run_cli(reactor, "flows", url=stub.url, api_key="k1,k2")
    assert result.code == 0, result
    assert stub.requests[0]["auth"] == "Bearer k1"


async def test_no_api_key_no_header(stub, reactor):
    stub.answer("GET", "/api/v1/flows", (200, {"flows": []}))
    result = await run_cli(reactor, "flows", url=stub.url + "/api/v1")
    assert result.code == 0, result
    assert stub.requests[0]["auth"] is None
    assert result.out.strip() == "no flows"


async def test_api_error_exits_2(stub, reactor):
    stub.answer("POST", "/api/v1/flows/nope/runs", (404, {
        "error": "flow 'nope' not found", "code": "FLOW_NOT_FOUND",
        "details": {"flowName": "nope"}}))
    result = await run_cli(reactor, "run", "nope", url=stub.url)
    assert result.code == 2, result
    assert result.err.strip() == "error: flow 'nope' not found (FLOW_NOT_FOUND)"
    assert result.out == ""


async def test_non_json_error_exits_2(stub, reactor):
    stub.answer("GET", "/api/v1/runs", (502, b"<html>bad gateway</html>"))
    result = await run_cli(reactor, "runs", url=stub.url)
    assert result.code == 2, result
    assert "(HTTP_502)" in result.err


async def test_connection_refused_exits_3(reactor):
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        server.Site(resource.Resource()))
    url = f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()
    result = await run_cli(reactor, "runs", url=url)
    assert result.code == 3, result
    assert "connection refused" in result.err
    assert url in result.err


async def test_run_posts_input_and_prints_id(stub, reactor):
    stub.answer("POST", "/api/v1/flows/hello/runs", (201, RUN))
    result = await run_cli(reactor, "run", "hello", "--input", '{"n": [1, 2]}',
                           "--metadata", '{"by": "test"}',
                           "--idempotency-key", "once", url=stub.url)
    assert result.code == 0, result
    assert result.out.strip() == "r-1"
    [request] = stub.requests
    assert request["body"] == {"input": {"n": [1, 2]}, "metadata": {"by": "test"}}
    assert request["idempotency"] == "once"


async def test_run_without_input_posts_empty_object(stub, reactor):
    stub.answer("POST", "/api/v1/flows/hello/runs", (201, RUN))
    result = await run_cli(reactor, "run", "hello", url=stub.url)
    assert result.code == 0, result
    assert stub.requests[0]["body"] == {}


async def test_run_wait_completed(stub, reactor):
    stub.answer("POST", "/api/v1/flows/hello/runs", (201, RUN))
    stub.answer("GET", "/api/v1/runs/r-1",
                (200, {**RUN, "status": "running"}),
                (200, {**RUN, "status": "running"}),
                (200, {**RUN, "status": "completed"}))
    result = await run_cli(reactor, "run", "hello", "--wait", url=stub.url)
    assert result.code == 0, result
    assert result.out.split() == ["r-1", "completed"]
    assert len([r for r in stub.requests if r["method"] == "GET"]) == 3


async def test_run_wait_failed_exits_1(stub, reactor):
    stub.answer("POST", "/api/v1/flows/hello/runs", (201, RUN))
    stub.answer("GET", "/api/v1/runs/r-1", (200, {
        **RUN, "status": "failed",
        "error": {"reason": "flow_failed", "exitCode": 3}}))
    result = await run_cli(reactor, "run", "hello", "--wait", url=stub.url)
    assert result.code == 1, result
    assert result.out.split() == ["r-1", "failed"]
    assert "flow_failed" in result.err


async def test_run_wait_timeout_exits_1(stub, reactor):
    stub.answer("POST", "/api/v1/flows/hello/runs", (201, RUN))
    stub.answer("GET", "/api/v1/runs/r-1", (200, {**RUN, "status": "running"}))
    result = await run_cli(reactor, "run", "hello", "--wait", "--timeout", "0.3",
                           url=stub.url)
    assert result.code == 1, result
    assert "did not finish within 0.3s" in result.err


async def test_run_wait_json_prints_final_run(stub, reactor):
    stub.answer("POST", "/api/v1/flows/hello/runs", (201, RUN))
    stub.answer("GET", "/api/v1/runs/r-1", (200, {**RUN, "status": "completed"}))
    result = await run_cli(reactor, "run", "hello", "--wait", "--json", url=stub.url)
    assert result.code == 0, result
    assert json.loads(result.out)["status"] == "completed"


async def test_runs_passes_filters(stub, reactor):
    stub.answer("GET", "/api/v1/runs", (200, {
        "runs": [{**RUN, "status": "failed", "startedAt": 1000, "completedAt": 3500}],
        "pagination": {"total": 9, "limit": 1, "offset": 0}}))
    result = await run_cli(reactor, "runs", "--status", "failed", "--flow", "hello",
                           "--limit", "1", url=stub.url)
    assert result.code == 0, result
    assert stub.requests[0]["args"] == {"status": "failed", "flowName": "hello",
                                        "limit": "1"}
    lines = result.out.splitlines()
    assert lines[0].split() == ["ID", "FLOW", "STATUS", "CREATED", "DURATION"]
    assert lines[1].split()[:3] == ["r-1", "hello", "failed"]
    assert lines[1].split()[-1] == "2.5s"
    assert "1 of 9 runs" in lines[2]


async def test_runs_says_when_the_total_is_an_estimate(stub, reactor):
    stub.answer("GET", "/api/v1/runs", (200, {
        "runs": [RUN], "pagination": {"total": 51234, "limit": 1, "offset": 0,
                                      "estimated": True}}))
    result = await run_cli(reactor, "runs", "--limit", "1", url=stub.url)
    assert result.code == 0, result
    assert "1 of about 51234 runs" in result.out.splitlines()[-1]


async def test_show_pages_through_steps(stub, reactor):
    stub.answer("GET", "/api/v1/runs/r-1", (200, {
        **RUN, "status": "running", "input": {"n": 1},
        "stages": [{"name": "s1", "status": "running", "final": True,
                    "createdAt": 0, "completedAt": None}]}))
    page1 = [{"id": f"st-{i}", "name": "work", "stage": "s1", "status": "pending",
              "retryCount": 0} for i in range(100)]
    page2 = [{"id": "st-100", "name": "work", "stage": "s1", "status": "running",
              "retryCount": 1}]
    stub.answer("GET", "/api/v1/runs/r-1/steps",
                (200, {"steps": page1, "pagination": {"total": 101}}),
                (200, {"steps": page2, "pagination": {"total": 101}}))
    result = await run_cli(reactor, "show", "r-1", url=stub.url)
    assert result.code == 0, result
    offsets = [r["args"].get("offset") for r in stub.requests
               if r["path"].endswith("/steps")]
    assert offsets == ["0", "100"]
    assert "st-100" in result.out
    assert '{"n": 1}' in result.out
    assert "STAGE" in result.out and "s1" in result.out


async def test_logs_oldest_first(stub, reactor):
    stub.answer("GET", "/api/v1/runs/r-1/logs", (200, {"logs": [
        {"entityType": "step", "entityId": "b", "level": "error",
         "message": "second", "createdAt": 2000},
        {"entityType": "flow", "entityId": "hello", "level": "info",
         "message": "first", "createdAt": 1000},
    ]}))
    result = await run_cli(reactor, "logs", "r-1", "--level", "info", url=stub.url)
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0].endswith("flow:hello  first")
    assert lines[1].endswith("step:b  second")
    assert stub.requests[0]["args"] == {"level": "info"}


@pytest.mark.parametrize("verb", ["abort", "retry", "pause", "resume"])
async def test_run_actions(stub, reactor, verb):
    stub.answer("POST", f"/api/v1/runs/r-1/{verb}",
                (200, {"message": f"run {verb} done", "processesKilled": 2}))
    result = await run_cli(reactor, verb, "r-1", url=stub.url)
    assert result.code == 0, result
    assert result.out.splitlines()[0] == f"run {verb} done"
    assert stub.requests[0]["method"] == "POST"


async def test_run_id_is_one_path_segment(stub, reactor):
    result = await run_cli(reactor, "show", "../flows", url=stub.url)
    assert result.code == 2
    assert stub.requests[0]["path"] == "/api/v1/runs/..%2Fflows"


async def test_action_conflict_exits_2(stub, reactor):
    stub.answer("POST", "/api/v1/runs/r-1/retry", (409, {
        "error": "run is running", "code": "RUN_ACTIVE", "details": {}}))
    result = await run_cli(reactor, "retry", "r-1", url=stub.url)
    assert result.code == 2
    assert result.err.strip() == "error: run is running (RUN_ACTIVE)"


async def test_module_entry_point(reactor):
    """
    C{python -m maxq} is the same command.
    """
    from twisted.internet.utils import getProcessOutputAndValue

    from tests.cli_support import ROOT, cli_env

    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "maxq", "lib-path"],
        env=cli_env(None), path=str(ROOT), reactor=reactor)
    assert code == 0, err
    assert out.decode().strip().endswith("maxq/lib/maxq.sh")
