"""
Issue 5: who may do what, and hostile input.  Scoped script tokens, tokens
and secrets kept out of what is stored and shown, size and shape limits,
unknown query parameters, names and paths, and the OpenAPI document.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import socket

from twisted.internet import threads
from twisted.logger import formatEvent, globalLogPublisher

from maxq import model
from maxq.api.app import Api
from maxq.api.http import MAX_JSON_DEPTH
from maxq.tokens import Credentials

from .api_support import (
    API_SH,
    add_noop,
    assert_error,
    new_uuid,
    snapshot,
    stage,
    staged_flow_sh,
    start_held,
    state_dir,
    step,
)

KEY = "op-key-1"
MIB = 1024 * 1024


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def authed(maxq, **overrides):
    return await maxq.start(env={"MAXQ_API_KEY": f"{KEY},op-key-2"}, **overrides)


# -- scoped tokens -------------------------------------------------------------------

async def test_token_of_run_a_is_403_on_run_b(maxq):
    server = await authed(maxq)
    a = await start_held(server, "held_a")
    b = await start_held(server, "held_b")
    creds = Credentials((KEY,))
    before = await snapshot(server, b.run_id)
    for token in (creds.script_token(a.run_id), creds.script_token(a.run_id, "wait")):
        h = bearer(token)
        assert_error(await server.get(f"/runs/{b.run_id}", headers=h), 403, "FORBIDDEN")
        assert_error(await server.get(f"/runs/{b.run_id}/steps", headers=h), 403, "FORBIDDEN")
        assert_error(await server.get(f"/runs/{b.run_id}/fields", headers=h), 403,
                     "FORBIDDEN")
        assert_error(await server.get(f"/runs/{b.run_id}/logs", headers=h), 403, "FORBIDDEN")
        assert_error(await server.post(f"/runs/{b.run_id}/steps",
                                       stage("evil", [step("e", "ok")]), headers=h),
                     403, "FORBIDDEN")
        assert_error(await server.post(f"/runs/{b.run_id}/steps/wait/fields",
                                       {"fields": {"x": 1}}, headers=h), 403, "FORBIDDEN")
        assert_error(await server.post(f"/runs/{b.run_id}/logs",
                                       {"entityType": "run", "level": "info",
                                        "message": "m"}, headers=h), 403, "FORBIDDEN")
        assert_error(await server.patch(f"/runs/{b.run_id}", {"output": 1}, headers=h),
                     403, "FORBIDDEN")
        # Its own run is fine.
        status, run = await server.get(f"/runs/{a.run_id}", headers=h)
        assert status == 200 and run["id"] == a.run_id
    assert await snapshot(server, b.run_id) == before
    status, step_b = await server.get(f"/runs/{b.run_id}/steps/wait")
    assert step_b["fields"] in ({}, None)
    await a.finish()
    await b.finish()


async def test_step_token_posts_only_its_own_fields(maxq):
    server = await authed(maxq)
    held = await start_held(server)
    status, body = await server.post(
        f"/runs/{held.run_id}/steps",
        stage("more", [step("other", "wait")]))
    assert status == 201, body
    creds = Credentials((KEY,))
    mine = bearer(creds.script_token(held.run_id, "wait"))
    assert_error(await server.post(f"/runs/{held.run_id}/steps/other/fields",
                                   {"fields": {"x": 1}}, headers=mine), 403, "FORBIDDEN")
    status, body = await server.post(f"/runs/{held.run_id}/steps/wait/fields",
                                     {"fields": {"mine": True}}, headers=mine)
    assert status == 200 and body["fields"] == {"mine": True}, body
    # A step token is a token for that one step: renaming the step in it
    # breaks the signature.
    forged = creds.script_token(held.run_id, "wait").replace(".wait.", ".other.")
    assert_error(await server.post(f"/runs/{held.run_id}/steps/other/fields",
                                   {"fields": {"x": 1}}, headers=bearer(forged)),
                 401, "UNAUTHORIZED")
    # The flow's token (no step) may post any step's fields of its run.
    flow_token = bearer(creds.script_token(held.run_id))
    status, body = await server.post(f"/runs/{held.run_id}/steps/other/fields",
                                     {"fields": {"from": "flow"}}, headers=flow_token)
    assert status == 200, body
    status, other = await server.get(f"/runs/{held.run_id}/steps/other")
    assert other["fields"] == {"from": "flow"}
    await held.finish()


async def test_script_token_is_refused_on_operator_routes(maxq):
    server = await authed(maxq)
    add_noop(server)
    held = await start_held(server)
    rid = held.run_id
    h = bearer(Credentials((KEY,)).script_token(rid))
    for method, path, body in (
        ("GET", "/flows", None), ("GET", "/flows/noop", None),
        ("POST", "/flows/noop/runs", {}), ("POST", "/runs", {"flowName": "noop"}),
        ("GET", "/runs", None), ("POST", f"/runs/{rid}/abort", None),
        ("POST", f"/runs/{rid}/pause", None), ("POST", f"/runs/{rid}/resume", None),
        ("POST", f"/runs/{rid}/retry", None), ("POST", f"/runs/{rid}/steps/wait/retry", None),
    ):
        resp = await server.request(method, path, body, headers=h)
        try:
            assert_error(resp, 403, "FORBIDDEN")
        except AssertionError as e:
            raise AssertionError(f"{method} {path}: {e}") from None
    status, run = await server.get(f"/runs/{rid}")
    assert run["status"] == "running"
    await held.finish()


async def test_script_token_dies_with_its_run(maxq):
    server = await authed(maxq)
    held = await start_held(server)
    h = bearer(Credentials((KEY,)).script_token(held.run_id, "wait"))
    status, _ = await server.get(f"/runs/{held.run_id}", headers=h)
    assert status == 200
    run = await held.finish()
    assert run["status"] == "completed", run
    assert_error(await server.get(f"/runs/{held.run_id}", headers=h), 403, "FORBIDDEN")
    assert_error(await server.post(f"/runs/{held.run_id}/steps/wait/fields",
                                   {"fields": {"late": 1}}, headers=h), 403, "FORBIDDEN")


async def test_wrong_or_missing_credentials_are_401_everywhere(maxq):
    """
    Every operation of the OpenAPI document but /health and the document
    itself answers 401 without valid credentials, and the error does not
    echo what was presented.
    """
    server = await authed(maxq)
    add_noop(server)
    status, spec = await server.get("/openapi.json")
    assert status == 200
    presented = "mxq1.%s..%s" % (new_uuid(), "0" * 64)
    checked = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if operation.get("security") == []:
                continue
            url = (path.replace("{flow}", "noop").replace("{runId}", new_uuid())
                   .replace("{stepId}", "s"))
            body = {} if method in ("post", "patch") else None
            for headers in ({}, bearer("wrong"), bearer(KEY + "x"), bearer(presented),
                            {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
                server.headers = headers
                status, err = await server.request(method.upper(), url, body, prefix=False)
                assert status == 401, (method, path, headers, status, err)
                assert err["code"] == "UNAUTHORIZED"
                assert presented not in json.dumps(err) and "wrong" not in json.dumps(err)
                checked += 1
    assert checked >= 6 * 18
    server.headers = bearer("op-key-2")  # the second key of the list works too
    status, _ = await server.get("/flows")
    assert status == 200


class _LogCapture:
    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, event):
        text = formatEvent(event) or ""
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        self.lines.append(text + " " + repr(sorted(event.items(), key=str)))


async def test_tokens_never_stored_logged_or_shown(maxq):
    capture = _LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        server = await authed(maxq, max_log_capture=4096)
        state = state_dir(server, "leaky")
        seen = shlex.quote(str(state / "seen"))
        # Both scripts print their token, and post it as a log message.
        leak = f"""\
        echo "token=$MAXQ_TOKEN"
        echo "err-token=$MAXQ_TOKEN" >&2
        echo "$MAXQ_TOKEN" >> {seen}
        curl -sS --fail-with-body -H "Authorization: Bearer $MAXQ_TOKEN" \\
          -H 'Content-Type: application/json' -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/logs" \\
          -d '{{"entityType": "run", "level": "info", "message": "my token is '"$MAXQ_TOKEN"'"}}'
        """
        flow = staged_flow_sh({"": stage("s", [step("leaker", "leak")], final=True)},
                              extra=leak)
        server.flows.add("leaky", flow, steps={"leak": API_SH + leak})
        run = await server.trigger("leaky")
        run = await server.wait_run(run["id"])
        assert run["status"] == "completed", run

        creds = Credentials((KEY,))
        tokens = {creds.script_token(run["id"]), creds.script_token(run["id"], "leaker")}
        assert set((state / "seen").read_text().split()) == tokens  # what scripts got
        macs = {t.rsplit(".", 1)[1] for t in tokens}

        # API responses.
        bodies = []
        for path in (f"/runs/{run['id']}", f"/runs/{run['id']}/steps",
                     f"/runs/{run['id']}/steps/leaker", f"/runs/{run['id']}/fields",
                     f"/runs/{run['id']}/logs", "/runs"):
            status, body = await server.get(path)
            assert status == 200, (path, body)
            bodies.append(json.dumps(body))
        text = "\n".join(bodies)
        assert not any(mac in text for mac in macs)
        status, leaker = await server.get(f"/runs/{run['id']}/steps/leaker")
        assert "token=***" in leaker["stdout"] and "err-token=***" in leaker["stderr"]
        assert "MAXQ_TOKEN" not in leaker["env"]
        status, full = await server.get(f"/runs/{run['id']}")
        assert "token=***" in full["stdout"], full["stdout"]
        status, logs = await server.get(f"/runs/{run['id']}/logs?entityType=run")
        assert any(e["message"] == "my token is ***" for e in logs["logs"]), logs

        # Error messages: a token presented where it is not allowed.
        for token in tokens:
            status, err = await server.get("/flows", headers=bearer(token))
            assert status == 403 and not any(mac in json.dumps(err) for mac in macs)

        # The server's log.
        logged = "\n".join(capture.lines)
        assert not any(mac in logged for mac in macs)

        # The database.
        if maxq.backend == "sqlite":
            db = server.config.sqlite_path
            data = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
            assert data, "no database file"
            assert not any(mac.encode() in data for mac in macs)
    finally:
        globalLogPublisher.removeObserver(capture)


# -- secrets in output -----------------------------------------------------------------

async def test_secret_env_values_are_masked(maxq):
    server = await maxq.start(max_log_capture=4096)
    env = {"API_KEY": "sk-live-0123456789", "db_password": "hunter2hunter2",
           "GITHUB_TOKEN": "ghp_abcdefgh", "MY_SECRET": "s3cr3t-value",
           "SHORT_TOKEN": "abc", "PLAIN": "visible-value", "KEYBOARD": "qwerty-layout"}
    talk = """\
    for v in "$API_KEY" "$db_password" "$GITHUB_TOKEN" "$MY_SECRET" "$SHORT_TOKEN" \\
             "$PLAIN" "$KEYBOARD"; do
        echo "out:$v"; echo "err:$v" >&2
    done
    echo "twice:$API_KEY$API_KEY"
    """
    flow = staged_flow_sh({"": stage("s", [step("talker", "talk", env=env)], final=True)})
    server.flows.add("masked", flow, steps={"talk": talk})
    run = await server.trigger("masked")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run

    status, s = await server.get(f"/runs/{run['id']}/steps/talker")
    assert s["env"] == {"API_KEY": "***", "db_password": "***", "GITHUB_TOKEN": "***",
                        "MY_SECRET": "***", "SHORT_TOKEN": "***", "PLAIN": "visible-value",
                        "KEYBOARD": "qwerty-layout"}, s["env"]
    assert s["stdout"].splitlines() == [
        "out:***", "out:***", "out:***", "out:***",
        "out:abc",  # shorter than 4 characters: left alone in output
        "out:visible-value", "out:qwerty-layout", "twice:******",
    ], s["stdout"]
    assert s["stderr"].splitlines()[:4] == ["err:***"] * 4
    steps = await server.steps(run["id"])
    assert steps[0]["env"] == s["env"]
    if maxq.backend == "sqlite":
        db = server.config.sqlite_path
        data = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        # The env itself is kept (a retry needs it); the output is not.
        for value in ("out:sk-live-0123456789", "out:hunter2hunter2", "out:ghp_abcdefgh"):
            assert value.encode() not in data


async def test_secret_cut_by_the_output_tail_is_masked(maxq):
    """
    Only the last MAXQ_MAX_LOG_CAPTURE bytes are kept: when they begin in the
    middle of a secret, that fragment is masked too.
    """
    server = await maxq.start(max_log_capture=40)
    secret = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"  # 36 characters
    # The last 40 bytes: "UVWXYZ0123456789" + " and then the end\n" ... cut
    # inside the secret.
    talk = 'printf "%s and then the end.....\\n" "$DEPLOY_KEY"'
    flow = staged_flow_sh({"": stage("s", [step("t", "talk", env={"DEPLOY_KEY": secret})],
                                     final=True)})
    server.flows.add("cut", flow, steps={"talk": talk})
    run = await server.wait_run((await server.trigger("cut"))["id"])
    assert run["status"] == "completed", run
    status, s = await server.get(f"/runs/{run['id']}/steps/t")
    assert s["stdout"].startswith("***"), s["stdout"]
    assert s["stdout"].endswith(" and then the end.....\n"), s["stdout"]
    assert not re.search(r"[A-Z0-9]{4}", s["stdout"]), s["stdout"]


# -- limits ---------------------------------------------------------------------------

async def test_json_nesting_depth_limit(maxq):
    server = await maxq.start()
    add_noop(server)

    def nested(depth):
        # {"input": <depth - 1 arrays>}: depth levels in all.
        return (b'{"input": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}")

    status, run = await server.post("/flows/noop/runs", raw=nested(MAX_JSON_DEPTH))
    assert status == 201, run
    body = assert_error(await server.post("/flows/noop/runs", raw=nested(MAX_JSON_DEPTH + 1)),
                        400, "INVALID_JSON")
    assert body["details"] == {"limit": MAX_JSON_DEPTH}
    for depth in (10_000, 1_000_000):
        resp = await server.post("/flows/noop/runs", raw=nested(depth))
        assert_error(resp, 400, "INVALID_JSON")
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 1


def _post_huge(port: int, size: int, wait_first: bool, chunked: bool) -> tuple[int, int]:
    """
    POST C{size} bytes with a blocking socket (run in a thread, so the
    reactor keeps serving); return the status the server answered (0 if the
    connection was reset before it could be read) and how many body bytes
    were sent before the answer or the reset.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = (b"POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n")
    head += (b"Transfer-Encoding: chunked\r\n\r\n" if chunked
             else b"Content-Length: %d\r\n\r\n" % size)
    sock.sendall(head)
    answer = b""
    if wait_first:
        try:
            answer = sock.recv(65536)
        except socket.timeout:
            pass
    chunk = b"x" * 65536
    data = (b"%x\r\n%s\r\n" % (len(chunk), chunk)) if chunked else chunk
    sent = 0
    try:
        while not answer and sent < size:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                answer = sock.recv(65536)
                break
            sock.sendall(data)
            sent += len(chunk)
        while answer and b"\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    finally:
        sock.close()
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0
    return status, sent


async def test_20_mb_body_is_413_without_reading_it(maxq):
    server = await maxq.start()
    add_noop(server)
    port = int(server.url.rsplit(":", 1)[1])
    size = 20 * MIB
    # Waiting for an early answer (as Expect: 100-continue does): 413 before
    # a single byte of the body.
    status, sent = await threads.deferToThread(_post_huge, port, size, True, False)
    assert (status, sent) == (413, 0)
    # Sending blindly: the server answers and closes long before 20 MB (the
    # answer may be lost to the reset that closing on unread data causes).
    status, sent = await threads.deferToThread(_post_huge, port, size, False, False)
    print("Content-Length body: status", status, "bytes sent", sent)
    assert status in (413, 0) and sent < 8 * MIB, (status, sent)
    # Chunked: no length up front, so the server reads up to its limit.
    status, sent = await threads.deferToThread(_post_huge, port, size, False, True)
    print("chunked body: status", status, "bytes sent", sent)
    assert status in (413, 0) and sent < server.config.max_body_bytes + 8 * MIB, (status,
                                                                                sent)
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 0
    status, health = await server.get("/health", prefix=False)
    assert status == 200


async def test_stored_value_size_limits(maxq):
    server = await maxq.start()
    add_noop(server)
    big = "x" * (MIB + 1)
    for body in ({"input": big}, {"input": [big]}, {"metadata": {"m": big}},
                 {"name": "n" * (model.MAX_RUN_NAME_BYTES + 1)},
                 {"description": "d" * (model.MAX_DESCRIPTION_BYTES + 1)}):
        err = assert_error(await server.post("/flows/noop/runs", body), 400,
                           "VALUE_TOO_LARGE")
        assert err["details"]["field"] == next(iter(body)), err
        assert err["details"]["size"] > err["details"]["limit"]
    assert_error(await server.post("/runs", {"flowName": "noop", "input": big}), 400,
                 "VALUE_TOO_LARGE")
    for body in ({"name": "a\x00b"}, {"description": "\x00"}):
        assert_error(await server.post("/flows/noop/runs", body), 400, "VALIDATION_ERROR")
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 0
    # At the limit is fine.
    status, run = await server.post("/flows/noop/runs", {"input": "y" * (MIB - 2)})
    assert status == 201, run
    held = await start_held(server)
    for body in ({"output": big}, {"metadata": {"m": big}}):
        assert_error(await server.patch(f"/runs/{held.run_id}", body), 400,
                     "VALUE_TOO_LARGE")
    status, run = await server.get(f"/runs/{held.run_id}")
    assert run["output"] is None and run["metadata"] is None
    await held.finish()


async def test_step_fields_size_limit_after_merge(maxq):
    server = await maxq.start()
    held = await start_held(server)
    path = f"/runs/{held.run_id}/steps/wait/fields"
    half = "h" * (600 * 1024)
    status, body = await server.post(path, {"fields": {"a": half}})
    assert status == 200, body
    err = assert_error(await server.post(path, {"fields": {"b": half}}), 400,
                       "FIELDS_TOO_LARGE")
    assert err["details"]["limit"] == model.MAX_FIELDS_BYTES
    status, s = await server.get(f"/runs/{held.run_id}/steps/wait")
    assert set(s["fields"]) == {"a"}
    # Replacing a key counts the merged result, not the sum of posts.
    status, body = await server.post(path, {"fields": {"a": half, "c": 1}})
    assert status == 200, body
    await held.finish()


async def test_log_limits(maxq):
    server = await maxq.start()
    held = await start_held(server)
    path = f"/runs/{held.run_id}/logs"
    good = {"entityType": "step", "entityId": "wait", "level": "info", "message": "m"}
    status, before = await server.get(path)
    for body, code in (
        ({**good, "message": "m" * (model.MAX_LOG_MESSAGE_BYTES + 1)}, "VALUE_TOO_LARGE"),
        ({**good, "message": "é" * (model.MAX_LOG_MESSAGE_BYTES // 2 + 1)},
         "VALUE_TOO_LARGE"),
        ({**good, "metadata": {"k": "v" * model.MAX_LOG_METADATA_BYTES}}, "VALUE_TOO_LARGE"),
        ({**good, "entityId": "e" * (model.MAX_NAME_LENGTH + 1)}, "VALIDATION_ERROR"),
        ({**good, "message": "nul\x00inside"}, "VALIDATION_ERROR"),
    ):
        assert_error(await server.post(path, body), 400, code)
    status, after = await server.get(path)
    assert after["pagination"]["total"] == before["pagination"]["total"]
    status, entry = await server.post(path, {**good,
                                             "message": "m" * model.MAX_LOG_MESSAGE_BYTES})
    assert status == 201, entry
    await held.finish()


async def test_env_limits_and_forbidden_keys(maxq):
    server = await maxq.start()
    held = await start_held(server)
    before = await snapshot(server, held.run_id)
    path = f"/runs/{held.run_id}/steps"
    for env in (
        {"LD_PRELOAD": "/tmp/evil.so"}, {"ld_preload": "/tmp/evil.so"},
        {"BASH_ENV": "/tmp/evil.sh"}, {"BASH_FUNC_ls%%": "() { :; }"},
        {"MAXQ_TOKEN": "x"}, {"MAXQ_API": "http://evil"},
        {f"K{i}": "v" for i in range(model.MAX_ENV_ENTRIES + 1)},
        {"BIG": "v" * (model.MAX_ENV_VALUE_BYTES + 1)},
        {f"K{i}": "v" * 30_000 for i in range(10)},  # 300 KB in all
        {"NUL": "a\x00b"},
    ):
        resp = await server.post(path, stage("e", [step("e1", "ok", env=env)]))
        assert_error(resp, 400, "INVALID_ENV")
    assert await snapshot(server, held.run_id) == before
    ok = {f"K{i}": "v" * 20_000 for i in range(10)}  # 200 KB: fine
    status, body = await server.post(path, stage("e", [step("e1", "ok", env=ok)]))
    assert status == 201, body
    await held.finish()


async def test_id_and_name_length_limits(maxq):
    server = await maxq.start()
    held = await start_held(server)
    path = f"/runs/{held.run_id}/steps"
    long = "a" * (model.MAX_NAME_LENGTH + 1)
    before = await snapshot(server, held.run_id)
    assert_error(await server.post(path, stage("s2", [step(long, "ok")])), 400,
                 "INVALID_STEP_ID")
    assert_error(await server.post(path, stage("s2", [step("x", long)])), 400,
                 "STEP_NOT_FOUND")
    assert_error(await server.post(path, stage(long, [step("x", "ok")])), 400,
                 "VALIDATION_ERROR")
    assert_error(await server.get(f"/flows/{long}"), 404, "FLOW_NOT_FOUND")
    assert_error(await server.post(f"/flows/{long}/runs", {}), 404, "FLOW_NOT_FOUND")
    assert await snapshot(server, held.run_id) == before
    exact = "b" * model.MAX_NAME_LENGTH
    status, body = await server.post(path, stage(exact, [step(exact, "ok")]))
    assert status == 201, body
    await held.finish()


async def test_too_many_steps_in_a_stage(maxq):
    server = await maxq.start(max_steps_per_stage=5)
    held = await start_held(server)
    before = await snapshot(server, held.run_id)
    steps = [step(f"s{i}", "ok") for i in range(6)]
    err = assert_error(await server.post(f"/runs/{held.run_id}/steps", stage("big", steps)),
                       400, "TOO_MANY_STEPS")
    assert err["details"]["limit"] == 5
    assert await snapshot(server, held.run_id) == before
    status, body = await server.post(f"/runs/{held.run_id}/steps", stage("big", steps[:5]))
    assert status == 201, body
    await held.finish()


async def test_too_many_dependencies_in_a_stage(maxq):
    server = await maxq.start(max_dependencies_per_stage=3)
    held = await start_held(server)
    before = await snapshot(server, held.run_id)
    steps = [step("a", "ok"), step("b", "ok", dependsOn=["a"]),
             step("c", "ok", dependsOn=["a", "b"]), step("d", "ok", dependsOn=["c"])]
    err = assert_error(await server.post(f"/runs/{held.run_id}/steps", stage("deps", steps)),
                       400, "TOO_MANY_DEPENDENCIES")
    assert err["details"] == {"limit": 3, "given": 4}
    assert await snapshot(server, held.run_id) == before
    status, body = await server.post(f"/runs/{held.run_id}/steps", stage("deps", steps[:3]))
    assert status == 201, body
    await held.finish()


async def test_idempotency_key_length(maxq):
    server = await maxq.start()
    add_noop(server)
    for key in ("k" * 256, ""):
        resp = await server.post("/flows/noop/runs", {},
                                 headers={"Idempotency-Key": key})
        assert_error(resp, 400, "VALIDATION_ERROR")
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 0
    status, run = await server.post("/flows/noop/runs", {},
                                    headers={"Idempotency-Key": "k" * 255})
    assert status == 201, run


async def test_bad_and_unknown_query_parameters(maxq):
    server = await maxq.start()
    add_noop(server)
    held = await start_held(server)
    rid = held.run_id
    for path in ("/runs?limit=-1", "/runs?limit=abc", "/runs?sortBy=evil",
                 "/runs?limit=%EF%BC%91", "/runs?limit=1e3", "/runs?limit=+5",
                 "/runs?offset=99999999999999999999999",
                 f"/runs/{rid}/steps?limit=-1", f"/runs/{rid}/steps?sortBy=evil",
                 f"/runs/{rid}/logs?limit=abc", f"/runs/{rid}/logs?level=loud"):
        assert_error(await server.get(path), 400, "VALIDATION_ERROR")
    for method, path in (
        ("GET", "/runs?color=blue"), ("GET", "/flows?x=1"), ("GET", "/flows/noop?x=1"),
        ("GET", f"/runs/{rid}?verbose=1"), ("GET", f"/runs/{rid}/steps?stageName=x"),
        ("GET", f"/runs/{rid}/fields?step=wait"), ("GET", f"/runs/{rid}/logs?sortBy=id"),
        ("GET", f"/runs/{rid}/steps/wait?x="), ("POST", "/flows/noop/runs?dryRun=1"),
        ("POST", f"/runs/{rid}/abort?force=1"), ("GET", "/openapi.json?v=2"),
    ):
        err = assert_error(await server.request(method, path, {} if method == "POST" else None),
                           400, "VALIDATION_ERROR")
        name = path.split("?", 1)[1].split("=", 1)[0]
        assert err["details"]["parameters"] == [name], err
        assert name in err["error"]
    status, run = await server.get(f"/runs/{rid}")
    assert run["status"] == "running"  # the abort with ?force was refused
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 1  # and so was the trigger
    # /health is for probes: it ignores query parameters.
    status, health = await server.get("/health?cachebust=1", prefix=False)
    assert status == 200, health
    await held.finish()


async def test_unpaired_surrogate_is_400(maxq):
    server = await maxq.start()
    add_noop(server)
    for raw in (rb'{"name": "\ud800"}', rb'{"input": {"k\udfff": 1}}'):
        assert_error(await server.post("/flows/noop/runs", raw=raw), 400, "INVALID_JSON")
    status, run = await server.post("/flows/noop/runs", raw=rb'{"name": "\ud83d\ude00"}')
    assert status == 201 and run["name"] == "\U0001F600", run


# -- names and paths ---------------------------------------------------------------------

async def test_flow_name_dot_dot_etc_is_not_found(maxq):
    server = await maxq.start()
    for name in ("..%2Fetc", "..%2F..%2Fetc", "%2E%2E%2Fetc"):
        assert_error(await server.get(f"/flows/{name}"), 404, "FLOW_NOT_FOUND")
        assert_error(await server.post(f"/flows/{name}/runs", {}), 404, "FLOW_NOT_FOUND")
    assert_error(await server.post("/runs", {"flowName": "../etc"}), 404, "FLOW_NOT_FOUND")
    # GET on the trigger route is no flow lookup.
    status, body = await server.get("/flows/x/runs")
    assert status == 405, body


async def test_symlinked_step_script_outside_the_root(maxq):
    server = await maxq.start()
    held = await start_held(server)
    outside = server.flows.root.parent / "outside-script.sh"
    marker = server.flows.root.parent / "outside-ran"
    outside.write_text(f"#!/usr/bin/env bash\necho ran > {shlex.quote(str(marker))}\n")
    outside.chmod(0o755)
    linked = server.flows.root / "held" / "steps" / "linked"
    linked.mkdir(parents=True)
    os.symlink(outside, linked / "step.sh")
    # A symlink that stays inside the root is followed.
    inside = server.flows.root / "held" / "steps" / "alias"
    inside.mkdir(parents=True)
    os.symlink(server.flows.root / "held" / "steps" / "ok" / "step.sh", inside / "step.sh")
    path = f"/runs/{held.run_id}/steps"
    assert_error(await server.post(path, stage("evil", [step("e", "linked")])), 400,
                 "STEP_NOT_FOUND")
    status, body = await server.post(path, stage("fine", [step("f", "alias")]))
    assert status == 201, body
    await server.wait_step(held.run_id, "f", {"completed"})
    await held.finish()
    assert not marker.exists()


# -- OpenAPI -----------------------------------------------------------------------------

def _document_operations(doc) -> set[tuple[str, str]]:
    return {(method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
            for path, item in doc["paths"].items() for method in item}


def _served_operations() -> set[tuple[str, str]]:
    served = set()
    for rule in Api.app.url_map.iter_rules():
        if rule.rule == "/" or rule.rule.startswith("/ui/"):
            continue  # the web UI (HTML, not part of the JSON API)
        path = re.sub(r"<[^>]+>", "{}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((method, path))
    return served


def test_openapi_document_matches_the_routes():
    from maxq.api.app import openapi_document

    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    assert _document_operations(doc) == _served_operations()
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for path, item in doc["paths"].items():
        names = set(re.findall(r"\{([^}]+)\}", path))
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)
            assert any(code.startswith("2") for code in op["responses"]), (method, path)


async def test_openapi_served_without_auth(maxq):
    from maxq.api.app import openapi_document

    server = await authed(maxq)
    server.headers = {}
    status, doc = await server.get("/openapi.json")
    assert status == 200
    assert doc == openapi_document()
