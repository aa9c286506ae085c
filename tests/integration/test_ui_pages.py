"""
The web UI's pages, fragments, sessions and actions over real HTTP,
without a browser (the browser tests are in test_ui_browser.py).
"""

from __future__ import annotations

import re

import treq

from .api_support import API_SH, start_held

KEY = "ui-pages-key"
MARKUP = '<script>alert(1)</script><img src=x onerror=alert(2)>'


async def fetch(server, method, path, *, cookie=None, csrf=None, data=None,
                headers=None):
    hdrs = dict(headers or {})
    if cookie:
        hdrs["Cookie"] = cookie
    if csrf:
        hdrs["X-CSRF-Token"] = csrf
    resp = await treq.request(method, server.url + path, data=data, headers=hdrs,
                              allow_redirects=False, reactor=server.reactor,
                              persistent=False)
    body = (await resp.content()).decode("utf-8", "replace")
    return resp, body


def one(resp, name):
    values = resp.headers.getRawHeaders(name) or [b""]
    value = values[0]
    return value.decode() if isinstance(value, bytes) else value


async def session(server, key=None):
    """
    A session cookie and its CSRF token: by logging in when C{key} is
    given, else handed out with the first page.
    """
    if key is not None:
        resp, _ = await fetch(server, "POST", "/ui/login", data={"key": key})
        assert resp.code == 303
    else:
        resp, _ = await fetch(server, "GET", "/ui/runs")
    cookie = one(resp, "Set-Cookie").split(";")[0]
    _, body = await fetch(server, "GET", "/ui/runs", cookie=cookie)
    csrf = re.search(r'data-csrf="([0-9a-f]+)"', body).group(1)
    return cookie, csrf


def assert_secure_headers(resp):
    csp = one(resp, "Content-Security-Policy")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("style-src")[0]
    assert "frame-ancestors 'none'" in csp
    assert one(resp, "X-Content-Type-Options") == "nosniff"


async def test_root_redirects_to_the_ui_and_pages_carry_security_headers(maxq):
    server = await maxq.start()
    resp, _ = await fetch(server, "GET", "/")
    assert resp.code == 302 and one(resp, "Location") == "/ui/"
    for path in ("/ui/", "/ui/runs", "/ui/flows", "/ui/schedules", "/ui/pools"):
        resp, body = await fetch(server, "GET", path)
        assert resp.code == 200, (path, body)
        assert one(resp, "Content-Type").startswith("text/html")
        assert_secure_headers(resp)
        assert not re.search(r"<script(?![^>]*\bsrc=)", body), path


async def test_static_files_are_served_from_the_package(maxq):
    server = await maxq.start()
    for name, kind in (("htmx.min.js", "text/javascript"), ("events-worker.js", "text/javascript"),
                       ("ui.css", "text/css"), ("NOTICE.txt", "text/plain")):
        resp, body = await fetch(server, "GET", "/ui/static/" + name)
        assert resp.code == 200 and one(resp, "Content-Type").startswith(kind), name
        assert body
    _, notice = await fetch(server, "GET", "/ui/static/NOTICE.txt")
    assert "htmx 2.0.8" in notice
    resp, _ = await fetch(server, "GET", "/ui/static/..%2Fbase.py")
    assert resp.code == 404


async def test_run_page_and_every_fragment(maxq):
    server = await maxq.start()
    held = await start_held(server)
    run_id = held.run_id
    await server.post(f"/runs/{run_id}/logs", {"entityType": "run", "level": "warn",
                                               "message": MARKUP})
    cookie, _ = await session(server)
    resp, page = await fetch(server, "GET", f"/ui/runs/{run_id}", cookie=cookie)
    assert resp.code == 200
    assert f'data-run-id="{run_id}"' in page
    assert 'data-step-id="wait"' in page and 'data-status="running"' in page
    assert f'data-events="/api/v1/events?runId={run_id}' in page
    assert MARKUP not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'data-action="abort"' in page and 'data-action="retry"' not in page
    for part, marker in (("header", 'id="run-header"'), ("graph", "<svg"),
                         ("timeline", 'id="run-timeline"'), ("stages", 'id="run-stages"'),
                         ("logs", 'id="run-logs"')):
        resp, body = await fetch(server, "GET", f"/ui/runs/{run_id}/fragments/{part}",
                                 cookie=cookie)
        assert resp.code == 200 and marker in body, part
        assert "<html" not in body, part
    resp, body = await fetch(server, "GET",
                             f"/ui/runs/{run_id}/fragments/nodes?ids=wait", cookie=cookie)
    assert one(resp, "Content-Type").startswith("image/svg+xml")
    assert body.count("data-step-id=") == 1 and 'data-step-id="wait"' in body
    resp, body = await fetch(server, "GET", f"/ui/runs/{run_id}/fragments/nope",
                             cookie=cookie)
    assert resp.code == 404
    resp, body = await fetch(server, "GET", f"/ui/fragments/runs/{run_id}/row",
                             cookie=cookie)
    assert body.lstrip().startswith("<tr") and f'data-run-id="{run_id}"' in body
    resp, body = await fetch(server, "GET", "/ui/fragments/runs", cookie=cookie)
    assert 'id="runs-table"' in body and run_id in body
    resp, body = await fetch(server, "GET", f"/ui/runs/{run_id}/steps/wait", cookie=cookie)
    assert resp.code == 200 and 'id="step-detail"' in body and 'data-status="running"' in body
    resp, body = await fetch(server, "GET",
                             f"/ui/runs/{run_id}/steps/wait/fragments/detail", cookie=cookie)
    assert body.lstrip().startswith("<section") and 'id="step-detail"' in body
    await held.finish()


async def test_unknown_runs_and_steps_are_404_pages(maxq):
    server = await maxq.start()
    cookie, _ = await session(server)
    for path in ("/ui/runs/00000000-0000-4000-8000-000000000000",
                 "/ui/runs/00000000-0000-4000-8000-000000000000/steps/x"):
        resp, body = await fetch(server, "GET", path, cookie=cookie)
        assert resp.code == 404 and "RUN_NOT_FOUND" in body


async def test_runs_page_filters_and_pages(maxq):
    server = await maxq.start()
    server.flows.add("alpha", "exit 0\n")
    server.flows.add("beta", "exit 1\n")
    ids = {"alpha": [], "beta": []}
    for i in range(27):
        flow = "alpha" if i % 3 else "beta"
        ids[flow].append((await server.trigger(flow))["id"])
    for flow in ids:
        for run_id in ids[flow]:
            await server.wait_run(run_id)
    cookie, _ = await session(server)
    _, body = await fetch(server, "GET", "/ui/runs?flow=beta", cookie=cookie)
    rows = re.findall(r'<tr data-run-id="([^"]+)" data-status="([^"]+)"', body)
    assert sorted(r for r, _ in rows) == sorted(ids["beta"])
    assert {s for _, s in rows} == {"failed"}
    _, body = await fetch(server, "GET", "/ui/runs?status=completed", cookie=cookie)
    assert len(re.findall(r"<tr data-run-id=", body)) == len(ids["alpha"])
    _, first = await fetch(server, "GET", "/ui/runs", cookie=cookie)
    _, second = await fetch(server, "GET", "/ui/runs?offset=25", cookie=cookie)
    assert len(re.findall(r"<tr data-run-id=", first)) == 25
    assert len(re.findall(r"<tr data-run-id=", second)) == 2
    assert "1–25 of 27" in first and 'rel="next"' in first and "26–27 of 27" in second


async def test_actions_need_the_csrf_token_and_show_the_api_error(maxq):
    server = await maxq.start()
    server.flows.add("quick", "exit 0\n")
    held = await start_held(server)
    cookie, csrf = await session(server)
    abort = f"/ui/runs/{held.run_id}/abort"
    resp, body = await fetch(server, "POST", abort, cookie=cookie)
    assert resp.code == 403 and "CSRF_FAILED" in body
    resp, body = await fetch(server, "POST", abort, cookie=cookie, csrf="0" * 64)
    assert resp.code == 403
    _, run = await server.get(f"/runs/{held.run_id}")
    assert run["status"] == "running"
    resp, body = await fetch(server, "POST", f"/ui/runs/{held.run_id}/retry", cookie=cookie,
                             csrf=csrf)
    assert resp.code == 409 and "RUN_ACTIVE" in body and 'role="alert"' in body
    resp, body = await fetch(server, "POST", abort, cookie=cookie, csrf=csrf)
    assert resp.code == 200 and one(resp, "HX-Trigger") == "maxq-changed"
    run = await server.wait_run(held.run_id)
    assert run["terminationReason"] == "aborted"
    # Trigger: JSON checked, errors shown, success sends the tab to the run.
    trigger = "/ui/flows/quick/trigger"
    resp, body = await fetch(server, "POST", trigger, cookie=cookie, csrf=csrf,
                             data={"input": "{nope"})
    assert resp.code == 400 and "INVALID_JSON" in body
    resp, body = await fetch(server, "POST", "/ui/flows/missing/trigger", cookie=cookie,
                             csrf=csrf)
    assert resp.code == 404 and "FLOW_NOT_FOUND" in body
    resp, body = await fetch(server, "POST", trigger, cookie=cookie, csrf=csrf,
                             data={"input": '{"a": [1, 2]}'})
    assert resp.code == 201
    location = one(resp, "HX-Redirect")
    run_id = location.rsplit("/", 1)[1]
    _, run = await server.get(f"/runs/{run_id}")
    assert run["input"] == {"a": [1, 2]}


async def test_login_session_and_the_api(maxq):
    server = await maxq.start(env={"MAXQ_API_KEY": KEY})
    resp, _ = await fetch(server, "GET", "/ui/runs")
    assert resp.code == 303 and one(resp, "Location").startswith("/ui/login?next=/ui/runs")
    resp, _ = await fetch(server, "GET", "/ui/fragments/runs", headers={"HX-Request": "true"})
    assert resp.code == 401 and one(resp, "HX-Redirect").startswith("/ui/login")
    resp, body = await fetch(server, "GET", "/ui/login")
    assert 'type="password"' in body and 'name="key"' in body
    resp, body = await fetch(server, "POST", "/ui/login", data={"key": "wrong"})
    assert resp.code == 401 and not resp.headers.getRawHeaders("Set-Cookie")
    # A script token is not a key to the UI.
    token = server.service.scheduler.credentials.script_token(
        "00000000-0000-4000-8000-000000000000")
    resp, _ = await fetch(server, "POST", "/ui/login", data={"key": token})
    assert resp.code == 401
    resp, _ = await fetch(server, "POST", "/ui/login?next=//evil.example/", data={"key": KEY})
    assert resp.code == 303 and one(resp, "Location") == "/ui/"
    set_cookie = one(resp, "Set-Cookie")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert "Max-Age=" in set_cookie and KEY not in set_cookie
    cookie, csrf = await session(server, KEY)
    # The session reads the API (the event stream, output) ...
    resp, body = await fetch(server, "GET", "/api/v1/runs", cookie=cookie)
    assert resp.code == 200
    # ... changes need its CSRF token too; a wrong bearer is not helped by it.
    held = await start_held(server)
    abort = f"/api/v1/runs/{held.run_id}/abort"
    resp, _ = await fetch(server, "POST", abort, cookie=cookie)
    assert resp.code == 401
    resp, _ = await fetch(server, "GET", "/api/v1/runs", cookie=cookie,
                          headers={"Authorization": "Bearer wrong"})
    assert resp.code == 401
    resp, _ = await fetch(server, "POST", abort, cookie=cookie, csrf=csrf)
    assert resp.code == 200
    # Bearer auth is unchanged.
    resp, _ = await fetch(server, "GET", "/api/v1/runs",
                          headers={"Authorization": f"Bearer {KEY}"})
    assert resp.code == 200
    # Logging out needs the token and ends the session in the browser.
    resp, _ = await fetch(server, "POST", "/ui/logout", cookie=cookie)
    assert resp.code == 403
    resp, _ = await fetch(server, "POST", "/ui/logout", cookie=cookie, data={"csrf": csrf})
    assert resp.code == 303 and "Max-Age=0" in one(resp, "Set-Cookie")
    await server.wait_run(held.run_id)


async def test_text_from_runs_is_escaped_everywhere(maxq):
    server = await maxq.start()
    flow_sh = API_SH + """
        [ -n "$MAXQ_COMPLETED_STAGE" ] && exit 0
        post_stage '{"stage": "x", "final": true, "steps": [{"id": "s", "name": "s", "maxRetries": 0}]}'
    """
    step_sh = API_SH + f"""
        printf '%s\\n' '{MARKUP}'
        api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps/$MAXQ_STEP_ID/fields" \\
          -d '{{"fields": {{"html": "<b onclick=x>bold</b>"}}}}'
    """
    server.flows.add("esc", flow_sh, steps={"s": step_sh},
                     flow_yaml="title: '<i>tilted</i>'\n")
    run = await server.trigger("esc")
    await server.wait_run(run["id"])
    cookie, _ = await session(server)
    _, step_page = await fetch(server, "GET", f"/ui/runs/{run['id']}/steps/s", cookie=cookie)
    assert MARKUP not in step_page and "&lt;img src=x onerror=alert(2)&gt;" in step_page
    assert "<b onclick" not in step_page and "&lt;b onclick=x&gt;" in step_page
    _, flows = await fetch(server, "GET", "/ui/flows", cookie=cookie)
    assert "<i>tilted" not in flows and "&lt;i&gt;tilted" in flows
