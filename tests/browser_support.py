"""
End-to-end tests of the web UI in a real headless Chromium (Debian's
C{chromium} and C{chromium-driver}) driven by selenium, against a real
server in a process of its own (C{python -m maxq serve}).

The tests are plain synchronous functions: the browser blocks, so neither
it nor the server may share the test's reactor.  One server (with an API
key) and one browser serve the whole session.

Without Chromium the tests are skipped with the reason, unless
C{MAXQ_REQUIRE_BROWSER=1} (set by C{.ci/run}), which makes that an error.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MAXQ_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MAXQ_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync")
KEY = "ui-test-key-0123456789"
SHEBANG = "#!/usr/bin/env bash\n"
# Scripts talk to the server with curl (no helper library needed).
API_SH = """\
api() {
  curl -sS --fail-with-body -H 'Content-Type: application/json' \\
    ${MAXQ_TOKEN:+-H "Authorization: Bearer $MAXQ_TOKEN"} "$@"
}
"""


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        reason = f"no browser for the UI tests: {', '.join(missing)} not found"
        if os.environ.get("MAXQ_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (MAXQ_REQUIRE_BROWSER=1)")
        pytest.skip(reason)


def start_browser(width: int = 1280, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="maxq-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.maxq_profile = profile
    return driver


def stop_browser(driver) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(driver.maxq_profile, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UiServer:
    """
    A MaxQ server in its own process, with the test flows, and a tiny
    blocking JSON client for the test's own calls to the API.
    """

    def __init__(self, root: Path):
        self.root = root
        self.flows = root / "flows"
        self.gates = root / "gates"
        self.flows.mkdir(parents=True)
        self.gates.mkdir()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def write(self, relative: str, body: str, executable: bool = True) -> None:
        path = self.flows / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        body = textwrap.dedent(body).lstrip("\n")
        if executable and not body.startswith("#!"):
            body = SHEBANG + body
        path.write_text(body)
        path.chmod(0o755 if executable else 0o644)

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAXQ_")}
        env.update(MAXQ_FLOWS_ROOT=str(self.flows),
                   MAXQ_SQLITE_PATH=str(self.root / "maxq.db"),
                   MAXQ_API_KEY=KEY, MAXQ_SCHEDULER_INTERVAL_MS="50",
                   MAXQ_ABORT_GRACE_MS="500", MAXQ_SHUTDOWN_GRACE_MS="0",
                   UI_TEST_GATES=str(self.gates), PYTHONUNBUFFERED="1")
        self.log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maxq", "serve", "--port", str(self.port)],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("server did not start:\n" + self.log_tail())
            time.sleep(0.05)

    def log_tail(self) -> str:
        text = (self.root / "server.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-60:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def api(self, method: str, path: str, body=None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + "/api/v1" + path, data=data, method=method,
            headers={"Authorization": f"Bearer {KEY}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def trigger(self, flow: str, body: dict | None = None) -> str:
        status, run = self.api("POST", f"/flows/{flow}/runs", body or {})
        assert status == 201, (status, run)
        return run["id"]

    def open_gate(self, name: str) -> None:
        (self.gates / name).touch()

    def wait(self, predicate, timeout: float = 20.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def wait_step(self, run_id: str, step_id: str, statuses) -> dict:
        def check():
            status, step = self.api("GET", f"/runs/{run_id}/steps/{step_id}")
            return step if status == 200 and step["status"] in statuses else None
        return self.wait(check, what=f"step {step_id} in {statuses}")

    def wait_run(self, run_id: str, statuses) -> dict:
        def check():
            status, run = self.api("GET", f"/runs/{run_id}")
            return run if status == 200 and run["status"] in statuses else None
        return self.wait(check, what=f"run {run_id} in {statuses}")


# A step that waits for the gate file named by its env GATE (or its id).
GATED_STEP = """\
gate="$UI_TEST_GATES/${GATE:-$MAXQ_RUN_ID-$MAXQ_STEP_ID}"
echo "step $MAXQ_STEP_ID waiting for its gate"
while [ ! -e "$gate" ]; do sleep 0.05; done
echo "step $MAXQ_STEP_ID done"
"""
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def write_flows(server: UiServer) -> None:
    """
    The flows the tests use; each names what it is for.
    """
    # gated: a -> b, each waiting for its own gate (the test opens them).
    server.write("gated/flow.sh", API_SH + """
        [ -n "$MAXQ_COMPLETED_STAGE" ] && exit 0
        api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d '{"stage": "main", "final": true,
          "steps": [{"id": "a", "name": "wait", "maxRetries": 0},
                    {"id": "b", "name": "wait", "maxRetries": 0, "dependsOn": ["a"]}]}'
    """)
    server.write("gated/steps/wait/step.sh", GATED_STEP)
    # flaky: its step fails until the test opens the gate "flaky-ok".
    server.write("flaky/flow.sh", API_SH + """
        [ -n "$MAXQ_COMPLETED_STAGE$MAXQ_FAILED_STAGE" ] && exit 0
        api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d '{"stage": "main", "final": true,
          "steps": [{"id": "shaky", "name": "shaky", "maxRetries": 0},
                    {"id": "after", "name": "shaky", "maxRetries": 0, "dependsOn": ["shaky"]}]}'
    """)
    server.write("flaky/steps/shaky/step.sh", """
        [ -e "$UI_TEST_GATES/flaky-ok" ] || { echo "not yet" >&2; exit 3; }
        echo fine
    """)
    # chatty: prints a numbered line every 0.2 s until its gate opens.
    server.write("chatty/flow.sh", API_SH + """
        [ -n "$MAXQ_COMPLETED_STAGE" ] && exit 0
        api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d '{"stage": "talk", "final": true,
          "steps": [{"id": "talker", "name": "talk", "maxRetries": 0}]}'
    """)
    server.write("chatty/steps/talk/step.sh", """
        i=0
        while [ ! -e "$UI_TEST_GATES/$MAXQ_RUN_ID-talker" ]; do
          i=$((i+1)); echo "line $i"; sleep 0.2
        done
        echo "the end"
    """)
    # hostile: markup in its title, output, fields, logs and run name.
    server.write("hostile/flow.yaml", f"title: '{XSS}'\ndescription: '{XSS}'\n",
                 executable=False)
    server.write("hostile/flow.sh", API_SH + """
        [ -n "$MAXQ_COMPLETED_STAGE" ] && exit 0
        api -X PATCH "$MAXQ_API/runs/$MAXQ_RUN_ID" -d "$(cat "$UI_TEST_GATES/../xss.json")"
        api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d '{"stage": "evil", "final": true,
          "steps": [{"id": "evil", "name": "evil", "maxRetries": 0, "env": {"NOTE": "x"}}]}'
    """)
    server.write("hostile/steps/evil/step.sh", API_SH + """
        cat "$UI_TEST_GATES/../xss.txt"
        api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps/$MAXQ_STEP_ID/fields" \\
          -d "$(cat "$UI_TEST_GATES/../xss-fields.json")"
        api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/logs" -d "$(cat "$UI_TEST_GATES/../xss-log.json")"
    """)
    (server.root / "xss.txt").write_text(XSS + "\n")
    (server.root / "xss.json").write_text(json.dumps({"name": XSS, "output": {"x": XSS}}))
    (server.root / "xss-fields.json").write_text(json.dumps({"fields": {"html": XSS}}))
    (server.root / "xss-log.json").write_text(json.dumps(
        {"entityType": "step", "entityId": "evil", "level": "warn", "message": XSS}))
    # timed: a schedule (daily at 06:00 UTC) to pause, resume and backfill.
    server.write("timed/flow.yaml", "schedule: '0 6 * * *'\ncatchup: none\n",
                 executable=False)
    server.write("timed/flow.sh", "exit 0\n")
    # showcase: three stages, fan-out and fan-in, one allowed failure path.
    server.write("showcase/flow.sh", API_SH + """
        case "$MAXQ_COMPLETED_STAGE" in
        "") api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d '{"stage": "fetch", "final": false,
              "steps": [{"id": "fetch-news", "name": "work", "maxRetries": 0},
                        {"id": "fetch-prices", "name": "work", "maxRetries": 0}]}' ;;
        fetch) api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d '{"stage": "analyse", "final": false,
              "steps": [{"id": "analyse-0", "name": "work", "maxRetries": 0, "dependsOn": ["fetch-news"]},
                        {"id": "analyse-1", "name": "work", "maxRetries": 0, "dependsOn": ["fetch-news", "fetch-prices"]},
                        {"id": "analyse-2", "name": "work", "maxRetries": 0, "dependsOn": ["fetch-prices"]},
                        {"id": "merge", "name": "work", "maxRetries": 0, "dependsOn": ["analyse-0", "analyse-1", "analyse-2"]}]}' ;;
        analyse) api -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d '{"stage": "report", "final": true,
              "steps": [{"id": "report", "name": "work", "maxRetries": 0, "dependsOn": ["merge"]},
                        {"id": "publish", "name": "wait", "maxRetries": 0, "dependsOn": ["report"],
                         "env": {"GATE": "showcase-publish"}}]}' ;;
        esac
    """)
    server.write("showcase/steps/work/step.sh", """
        for i in 1 2 3; do echo "$MAXQ_STEP_ID: chunk $i of 3"; sleep 0.05; done
    """)
    server.write("showcase/steps/wait/step.sh", GATED_STEP)
