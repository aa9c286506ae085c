"""
SPEC §3, errors in general: the error body, malformed JSON, bodies that are
not objects, unknown routes, wrong methods, body size limit, bearer auth.
"""

from __future__ import annotations

import json
import shlex

import treq

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.web.client import ResponseFailed

from .api_support import (
    add_noop,
    assert_error,
    assert_json_error,
    new_uuid,
    raw_http,
    stage,
    staged_flow_sh,
    start_held,
    state_dir,
    step,
)


def json_body_routes(run_id: str) -> list[tuple[str, str]]:
    """
    Every route that reads a JSON body, on the held run C{run_id}.
    """
    return [
        ("POST", "/flows/noop/runs"),
        ("POST", "/runs"),
        ("PATCH", f"/runs/{run_id}"),
        ("POST", f"/runs/{run_id}/steps"),
        ("POST", f"/runs/{run_id}/steps/wait/fields"),
        ("POST", f"/runs/{run_id}/logs"),
    ]


async def test_malformed_json_is_400(maxq):
    server = await maxq.start()
    add_noop(server)
    held = await start_held(server)
    rid = held.run_id
    requests = json_body_routes(rid)
    for method, path in requests:
        for raw in (b'{"input":', b"nope", b"{'single': 'quotes'}", b"\xff\xfe\x00",
                    b'{"a": 1} trailing', b"[1,"):
            resp = await server.request(method, path, raw=raw)
            try:
                assert_error(resp, 400, "INVALID_JSON")
            except AssertionError as e:
                raise AssertionError(f"{method} {path} {raw!r}: {e}") from None
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 1, runs  # only the held run
    status, s = await server.get(f"/runs/{rid}/steps/wait")
    assert s["fields"] in ({}, None)
    await held.finish()


async def test_non_standard_json_constants_are_400(maxq):
    """
    NaN and Infinity are not JSON (Python's json module accepts them).
    """
    server = await maxq.start()
    add_noop(server)
    held = await start_held(server)
    rid = held.run_id
    problems = []
    for method, path, raw in (
        ("POST", "/flows/noop/runs", b'{"input": NaN}'),
        ("POST", "/runs", b'{"flowName": "noop", "metadata": {"x": Infinity}}'),
        ("PATCH", f"/runs/{rid}", b'{"output": -Infinity}'),
        ("POST", f"/runs/{rid}/steps/wait/fields", b'{"fields": {"x": NaN}}'),
        ("POST", f"/runs/{rid}/logs",
         b'{"entityType": "run", "level": "info", "message": "m", "metadata": {"x": NaN}}'),
    ):
        status, body = await server.request(method, path, raw=raw)
        if status != 400 or not isinstance(body, dict) or body.get("code") != "INVALID_JSON":
            problems.append((method, path, status))
    assert problems == []
    await held.finish()


async def test_deeply_nested_json_is_not_a_server_fault(maxq):
    server = await maxq.start()
    add_noop(server)
    depth = 100_000
    raw = b'{"input": ' + b"[" * depth + b"]" * depth + b"}"
    status, body = await server.request("POST", "/flows/noop/runs", raw=raw)
    assert status == 400, (status, body)
    assert body["code"] in ("INVALID_JSON", "VALIDATION_ERROR"), body
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 0


def _strict_json(raw: bytes):
    def reject(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(raw, parse_constant=reject)


async def test_non_finite_numbers_never_come_back(maxq):
    """
    1e400 is valid JSON syntax but no finite number: the server may refuse it
    (400) or accept it, but what it sends back must still be JSON.
    """
    server = await maxq.start()
    add_noop(server)
    status, body = await server.request(
        "POST", "/flows/noop/runs", raw=b'{"input": 1e400, "metadata": {"x": -1e400}}')
    assert status in (201, 400), (status, body)
    if status == 400:
        assert body["code"] in ("INVALID_JSON", "VALIDATION_ERROR"), body
        return
    resp = await treq.get(f"{server.api}/runs/{body['id']}", reactor=server.reactor,
                          headers=server.headers, persistent=False)
    _strict_json(await resp.content())
    resp = await treq.get(f"{server.api}/runs", reactor=server.reactor,
                          headers=server.headers, persistent=False)
    _strict_json(await resp.content())


async def test_body_that_is_not_an_object_is_400(maxq):
    server = await maxq.start()
    add_noop(server)
    held = await start_held(server)
    rid = held.run_id
    requests = json_body_routes(rid)
    for method, path in requests:
        for value in ([1, 2], "text", 5, True):
            resp = await server.request(method, path, raw=json.dumps(value).encode())
            try:
                assert_error(resp, 400, "VALIDATION_ERROR")
            except AssertionError as e:
                raise AssertionError(f"{method} {path} {value!r}: {e}") from None
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 1, runs
    await held.finish()


async def test_unknown_routes_are_404(maxq):
    server = await maxq.start()
    for path in ("/nope", f"/runs/{new_uuid()}/nope",
                 f"/runs/{new_uuid()}/steps/a/b/c"):
        assert_error(await server.get(path), 404, "NOT_FOUND")
    for path in ("/nope", "/api/v2/flows", "/api"):
        assert_error(await server.get(path, prefix=False), 404, "NOT_FOUND")


async def test_non_utf8_url_is_a_json_error(maxq):
    server = await maxq.start()
    add_noop(server)
    # Bad input or an unknown resource, but with the JSON error body.
    problems = []
    for method, path in (("GET", "/flows/%ff"), ("GET", "/flows/alpha%ff"),
                         ("POST", "/flows/%ff/runs"), ("GET", "/runs/%ff"),
                         ("GET", "/runs/%ff/steps"),
                         ("GET", f"/runs/{new_uuid()}/steps/%ff"),
                         ("GET", "/%ff")):
        resp = await server.request(method, path, {} if method == "POST" else None)
        try:
            assert_json_error(resp, (400, 404))
        except AssertionError:
            problems.append((method, path, resp))
    assert problems == []


async def test_wrong_method_is_405(maxq):
    server = await maxq.start()
    rid = new_uuid()
    for method, path in (
        ("DELETE", "/flows"),
        ("POST", "/flows"),
        ("PUT", "/runs"),
        ("DELETE", f"/runs/{rid}"),
        ("PUT", f"/runs/{rid}"),
        ("GET", f"/runs/{rid}/abort"),
        ("GET", f"/runs/{rid}/retry"),
        ("GET", f"/runs/{rid}/pause"),
        ("GET", f"/runs/{rid}/resume"),
        ("DELETE", f"/runs/{rid}/steps"),
        ("GET", f"/runs/{rid}/steps/a/retry"),
        ("GET", f"/runs/{rid}/steps/a/fields"),
        ("POST", f"/runs/{rid}/fields"),
        ("DELETE", f"/runs/{rid}/logs"),
        ("POST", "/flows/x"),
    ):
        resp = await server.request(method, path)
        try:
            assert_error(resp, 405, "METHOD_NOT_ALLOWED")
        except AssertionError as e:
            raise AssertionError(f"{method} {path}: {e}") from None
    assert_error(await server.post("/health", {}, prefix=False), 405,
                 "METHOD_NOT_ALLOWED")


async def test_error_bodies_have_exactly_the_error_shape(maxq):
    server = await maxq.start()
    for resp in (
        await server.get("/flows/nope"),
        await server.get(f"/runs/{new_uuid()}"),
        await server.get("/runs?limit=0"),
        await server.post("/runs", {}),
        await server.get("/nope"),
        await server.request("DELETE", "/flows"),
    ):
        status, body = resp
        assert 400 <= status < 500, resp
        assert isinstance(body, dict), resp  # JSON Content-Type
        assert set(body) == {"error", "code", "details"}, body
        assert isinstance(body["error"], str) and body["error"]
        assert isinstance(body["code"], str) and body["code"].isupper()
        assert isinstance(body["details"], dict)


def _check_413(status, headers, body):
    assert status == 413, (status, headers, body)
    if body:
        assert headers.get("content-type", "").startswith("application/json"), headers
        parsed = json.loads(body)
        assert parsed["code"] == "PAYLOAD_TOO_LARGE", parsed
        assert set(parsed) == {"error", "code", "details"}, parsed


async def test_body_too_large_is_413(maxq):
    server = await maxq.start(max_body_bytes=1000)
    add_noop(server)
    port = int(server.url.rsplit(":", 1)[1])
    payload = json.dumps({"flowName": "noop", "input": "x" * 2000}).encode()
    assert len(payload) > 2000

    request = (b"POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nConnection: close\r\n"
               b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    _check_413(*await raw_http(server.reactor, port, request))

    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c)
                      for c in (payload[:900], payload[900:]))
    request = (b"POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nConnection: close\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    _check_413(*await raw_http(server.reactor, port, request))

    # Nothing was created and the server still serves; small bodies pass.
    status, runs = await server.get("/runs")
    assert status == 200 and runs["pagination"]["total"] == 0, runs
    status, run = await server.post("/runs", {"flowName": "noop", "input": "x" * 100})
    assert status == 201, run
    status, health = await server.get("/health", prefix=False)
    assert status == 200


async def test_body_too_large_through_treq(maxq):
    server = await maxq.start(max_body_bytes=1000)
    add_noop(server)
    try:
        status, body = await server.post("/flows/noop/runs", {"input": "x" * 2000})
    except (ResponseFailed, ConnectionLost, ConnectionDone):
        # A connection closed after the 413 is allowed; the raw test above
        # checks the status line.
        status, body = 413, None
    assert status == 413, body
    if isinstance(body, dict):
        assert_error((status, body), 413, "PAYLOAD_TOO_LARGE")
    status, runs = await server.get("/runs")
    assert runs["pagination"]["total"] == 0


# -- auth ------------------------------------------------------------------------

async def test_api_key_required(maxq):
    server = await maxq.start(env={"MAXQ_API_KEY": "s3cret"})
    add_noop(server)
    good = dict(server.headers)
    assert good == {"Authorization": "Bearer s3cret"}

    server.headers = {}
    # SPEC fixes the status, not the code's name.
    assert_json_error(await server.get("/flows"), (401,))
    for header in ("Bearer wrong", "Bearer s3cret2", "Bearer ", "s3cret",
                   "Basic czNjcmV0"):
        assert_json_error(await server.get("/flows", headers={"Authorization": header}),
                          (401,))
    status, body = await server.post("/flows/noop/runs", {},
                                     headers={"Authorization": "Bearer wrong"})
    assert status == 401
    # /health needs no auth.
    status, body = await server.get("/health", prefix=False)
    assert status == 200 and body["status"] == "healthy"

    server.headers = good
    status, body = await server.get("/runs")
    assert status == 200 and body["pagination"]["total"] == 0, body
    status, body = await server.get("/flows")
    assert status == 200 and [f["name"] for f in body["flows"]] == ["noop"]


async def test_api_key_scripts_use_their_token(maxq):
    server = await maxq.start(env={"MAXQ_API_KEY": "s3cret"})
    flow = staged_flow_sh({"": stage("s", [step("a")], final=True)})
    server.flows.add("authed", flow, steps={"ok": """\
    test -n "$MAXQ_TOKEN"
    curl -sS --fail-with-body -H "Authorization: Bearer $MAXQ_TOKEN" \\
      -H 'Content-Type: application/json' \\
      -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps/$MAXQ_STEP_ID/fields" \\
      -d '{"fields": {"authed": true}}'
    """})
    run = await server.trigger("authed")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    status, s = await server.get(f"/runs/{run['id']}/steps/a")
    assert s["fields"] == {"authed": True}


async def test_script_token_is_scoped_to_its_run(maxq):
    server = await maxq.start(env={"MAXQ_API_KEY": "s3cret"})
    other = await start_held(server)
    state = state_dir(server, "spy")
    (state / "other").write_text(other.run_id)
    codes = shlex.quote(str(state / "codes"))
    probe = f"""\
    other=$(cat {shlex.quote(str(state / "other"))})
    code() {{
      curl -s -o /dev/null -w '%{{http_code}}' -H "Authorization: Bearer $MAXQ_TOKEN" \\
        -H 'Content-Type: application/json' "$@"
    }}
    echo "get $(code "$MAXQ_API/runs/$other")" >> {codes}
    echo "abort $(code -X POST "$MAXQ_API/runs/$other/abort")" >> {codes}
    echo "fields $(code -X POST "$MAXQ_API/runs/$other/steps/wait/fields" \\
      -d '{{"fields": {{"x": 1}}}}')" >> {codes}
    echo "schedule $(code -X POST "$MAXQ_API/runs/$other/steps" \\
      -d '{{"stage": "evil", "final": true, "steps": [{{"id": "e", "name": "ok", "maxRetries": 0}}]}}')" >> {codes}
    echo "own $(code "$MAXQ_API/runs/$MAXQ_RUN_ID")" >> {codes}
    """
    flow = staged_flow_sh({"": stage("s", [step("probe", "probe")], final=True)})
    server.flows.add("spy", flow, steps={"probe": probe})
    run = await server.trigger("spy")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    got = dict(line.split() for line in (state / "codes").read_text().splitlines())
    assert got == {"get": "403", "abort": "403", "fields": "403", "schedule": "403",
                   "own": "200"}, got
    status, held_run = await server.get(f"/runs/{other.run_id}")
    assert held_run["status"] == "running"
    assert [s["name"] for s in held_run["stages"]] == ["hold"]
    status, s = await server.get(f"/runs/{other.run_id}/steps/wait")
    assert s["fields"] in ({}, None)
    await other.finish()
