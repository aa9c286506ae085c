"""
The web UI end to end (SPEC §9) in headless Chromium; see
L{tests.browser_support}.  One server and one browser for the module; the
tests run in one xdist group, on one worker.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.browser_support import (
    KEY, UiServer, require_browser, start_browser, stop_browser, write_flows,
)

pytestmark = pytest.mark.xdist_group("browser")
WAIT = 20


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    require_browser()
    server = UiServer(tmp_path_factory.mktemp("ui"))
    write_flows(server)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(ui_server):
    driver = start_browser()
    yield driver
    stop_browser(driver)


class Page:
    def __init__(self, driver, server: UiServer):
        self.driver = driver
        self.server = server

    def go(self, path: str):
        self.driver.get(self.server.url + path)
        if "/ui/login" in self.driver.current_url and not path.startswith("/ui/login"):
            self.login(KEY)
            self.driver.get(self.server.url + path)

    def login(self, key: str):
        from selenium.webdriver.common.by import By

        field = self.driver.find_element(By.CSS_SELECTOR, "input[name=key]")
        field.clear()
        field.send_keys(key)
        field.submit()

    def wait(self, predicate, what: str = "condition", timeout: float = WAIT):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(
            lambda d: predicate(), message=f"timed out waiting for {what}")

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def css(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    # Read in one script call: live updates may replace an element between
    # finding it and reading it.
    def attr(self, selector: str, name: str):
        return self.js("const e = document.querySelector(arguments[0]);"
                       "return e ? e.getAttribute(arguments[1]) : null", selector, name)

    def text(self, selector: str) -> str:
        return self.js("const e = document.querySelector(arguments[0]);"
                       "return e ? e.innerText : ''", selector)

    def click_and_confirm(self, selector: str):
        self.css(selector)[0].click()
        alert = self.wait(lambda: _alert(self.driver), "the confirmation")
        alert.accept()

    def mark_page(self):
        """
        Tag the page, to tell later that it was not reloaded.
        """
        self.js("window.__sameLoad = 'yes'")

    def same_page(self) -> bool:
        return self.js("return window.__sameLoad") == "yes"


def _alert(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


@pytest.fixture
def page(browser, ui_server):
    return Page(browser, ui_server)


def _needs(server: UiServer, path: str, what: str) -> None:
    """
    Skip when this build has no C{path} (a capability of another issue):
    once it is merged the route exists and the test runs.
    """
    status, body = server.api("GET", path)
    if status == 404 and body and body.get("code") == "NOT_FOUND":
        pytest.skip(f"{what} is not in this build (GET /api/v1{path} is 404)")


# ----------------------------------------------------------------- tests

def test_login_with_a_key(page, ui_server):
    driver = page.driver
    driver.delete_all_cookies()
    driver.get(ui_server.url + "/ui/runs")
    assert "/ui/login" in driver.current_url
    assert page.attr("input[name=key]", "type") == "password"
    page.login("not-the-key")
    assert page.wait(lambda: page.css("p.error"), "the refusal")
    assert "/ui/login" in driver.current_url
    assert not [c for c in driver.get_cookies() if c["name"] == "maxq_session"]
    page.login(KEY)
    page.wait(lambda: page.text("h1") == "Runs", "the runs page")
    cookie = [c for c in driver.get_cookies() if c["name"] == "maxq_session"][0]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie.get("expiry")
    assert "maxq_session" not in page.js("return document.cookie")
    # Browser storage holds nothing of ours (htmx notes the current path).
    stored = page.js("return JSON.stringify([{...localStorage}, {...sessionStorage}])")
    assert KEY not in stored and "maxq_session" not in stored
    assert page.js("return localStorage.length") == 0
    urls = page.js("return performance.getEntries().map(e => e.name)")
    urls.append(driver.current_url)
    assert all(KEY not in u for u in urls)
    # Out, and the session no longer opens pages.
    page.css("[data-action=logout]")[0].click()
    page.wait(lambda: "/ui/login" in driver.current_url, "the login form")
    driver.get(ui_server.url + "/ui/flows")
    assert "/ui/login" in driver.current_url
    page.login(KEY)
    page.wait(lambda: page.text("h1") == "Flows", "the flows page after logging in")


def test_trigger_checks_json_and_shows_the_api_error(page, ui_server):
    ui_server.write("doomed/flow.sh", "exit 0\n")
    page.go("/ui/flows")
    form = "#flow-doomed form"
    page.css(form + " textarea")[0].send_keys("{not json")
    page.css(form + " [data-action=trigger]")[0].click()
    assert page.wait(lambda: "not valid JSON" in page.text(form + " .result"),
                     "the JSON error")
    assert _alert(page.driver) is None
    _, runs = ui_server.api("GET", "/runs?flowName=doomed")
    assert runs["runs"] == []
    # The flow disappears behind the page's back: the API's error shows.
    shutil.rmtree(ui_server.flows / "doomed")
    ui_server.wait(lambda: ui_server.api("GET", "/flows/doomed")[0] == 404)
    page.css(form + " textarea")[0].clear()
    page.click_and_confirm(form + " [data-action=trigger]")
    assert page.wait(lambda: "FLOW_NOT_FOUND" in page.text(form + " .result"),
                     "the API's error")


def test_trigger_from_the_flows_page_and_watch_the_dag(page, ui_server):
    _needs(ui_server, "/events", "the event stream (SPEC §7)")
    page.go("/ui/flows")
    page.css("#flow-gated textarea")[0].send_keys('{"n": 1}')
    page.click_and_confirm("#flow-gated [data-action=trigger]")
    page.wait(lambda: "/ui/runs/" in page.driver.current_url, "the run page")
    run_id = page.driver.current_url.rsplit("/", 1)[1]
    _, run = ui_server.api("GET", f"/runs/{run_id}")
    assert run["input"] == {"n": 1}
    page.mark_page()
    node = "g[data-step-id={}]"
    page.wait(lambda: page.attr(node.format("a"), "data-status") == "running",
              "step a running")
    assert page.attr(node.format("b"), "data-status") == "pending"
    assert page.css("path[data-from='step:a'][data-to='step:b']")
    ui_server.open_gate(f"{run_id}-a")
    page.wait(lambda: page.attr(node.format("a"), "data-status") == "completed",
              "step a completed")
    page.wait(lambda: page.attr(node.format("b"), "data-status") == "running",
              "step b running")
    ui_server.open_gate(f"{run_id}-b")
    page.wait(lambda: page.attr("#run-header", "data-status") == "completed",
              "the run completed")
    assert page.attr(node.format("b"), "data-status") == "completed"
    assert page.same_page()
    # The runs page lists it, live too.
    page.go("/ui/runs")
    assert page.attr(f"tr[data-run-id='{run_id}']", "data-status") == "completed"
    page.mark_page()
    other = ui_server.trigger("gated")
    page.wait(lambda: page.css(f"tr[data-run-id='{other}']"), "the new run's row")
    page.wait(lambda: page.attr(f"tr[data-run-id='{other}']", "data-status") == "running",
              "the new run running")
    assert page.same_page()
    ui_server.api("POST", f"/runs/{other}/abort")


def test_many_tabs_follow_live_on_one_stream(page, ui_server):
    """
    More tabs than a browser opens connections to one server (six): each
    page loads and follows live, as the tabs share one event stream.
    """
    _needs(ui_server, "/events", "the event stream (SPEC §7)")
    driver = page.driver
    first = driver.current_window_handle
    page.go("/ui/runs")
    tabs, run_id = [first], None
    try:
        for _ in range(7):
            driver.switch_to.new_window("tab")
            tabs.append(driver.current_window_handle)
            page.go("/ui/runs")
            page.wait(lambda: page.text("h1") == "Runs", "the runs page in a new tab")
        run_id = ui_server.trigger("gated")
        for handle in tabs:
            driver.switch_to.window(handle)
            page.wait(lambda: page.attr(f"tr[data-run-id='{run_id}']", "data-status")
                      == "running", "the new run, live, in every tab")
    finally:
        for handle in tabs[1:]:
            driver.switch_to.window(handle)
            driver.close()
        driver.switch_to.window(first)
        if run_id:
            ui_server.api("POST", f"/runs/{run_id}/abort")


def test_abort_from_the_run_page(page, ui_server):
    run_id = ui_server.trigger("gated")
    ui_server.wait_step(run_id, "a", {"running"})
    page.go(f"/ui/runs/{run_id}")
    assert not page.css("[data-action=retry]")
    page.click_and_confirm("[data-action=abort]")
    page.wait(lambda: page.attr("#run-header", "data-status") == "failed", "the run failed")
    assert not page.css("[data-action=abort]") and not page.css("[data-action=pause]")
    assert page.css("[data-action=retry]")
    _, run = ui_server.api("GET", f"/runs/{run_id}")
    assert run["status"] == "failed" and run["terminationReason"] == "aborted"
    ui_server.wait_step(run_id, "a", {"failed"})
    page.go(f"/ui/runs/{run_id}")
    assert page.attr("g[data-step-id=a]", "data-status") == "failed"


def test_retry_a_failed_step(page, ui_server):
    run_id = ui_server.trigger("flaky")
    ui_server.wait_run(run_id, {"failed"})
    page.go(f"/ui/runs/{run_id}/steps/shaky")
    assert page.attr("#step-detail", "data-status") == "failed"
    page.go(f"/ui/runs/{run_id}/steps/after")
    assert not page.css("[data-action=retry-step]")  # it failed because of shaky
    page.go(f"/ui/runs/{run_id}/steps/shaky")
    ui_server.open_gate("flaky-ok")
    page.click_and_confirm("[data-action=retry-step]")
    page.wait(lambda: page.attr("#step-detail", "data-status") != "failed",
              "the step back in play")
    assert not page.css("[data-action=retry-step]")
    ui_server.wait_run(run_id, {"completed"})
    page.go(f"/ui/runs/{run_id}")
    assert page.attr("g[data-step-id=shaky]", "data-status") == "completed"
    assert page.attr("g[data-step-id=after]", "data-status") == "completed"


def test_follow_a_step_output_live(page, ui_server):
    _needs(ui_server, "/events", "the event stream (SPEC §7)")
    run_id = ui_server.trigger("chatty")
    ui_server.wait_step(run_id, "talker", {"running"})
    _needs(ui_server, f"/runs/{run_id}/steps/talker/output",
           "step output (SPEC §7)")
    page.go(f"/ui/runs/{run_id}/steps/talker")
    page.mark_page()
    page.wait(lambda: "line 3" in page.text("#out-stdout"), "line 3")
    page.wait(lambda: "line 8" in page.text("#out-stdout"), "line 8, later")
    ui_server.open_gate(f"{run_id}-talker")
    page.wait(lambda: "the end" in page.text("#out-stdout"), "the last line")
    page.wait(lambda: page.attr("#step-detail", "data-status") == "completed",
              "the step completed")
    assert page.same_page()
    assert page.text("#out-stdout").count("line 1\n") == 1  # appended, not re-read


def test_markup_from_runs_stays_inert(page, ui_server):
    run_id = ui_server.trigger("hostile")
    ui_server.wait_run(run_id, {"completed", "failed"})
    for path, where in ((f"/ui/runs/{run_id}/steps/evil", "#out-stdout"),
                        (f"/ui/runs/{run_id}/steps/evil", "#step-detail"),
                        (f"/ui/runs/{run_id}", "#run-logs"),
                        (f"/ui/runs/{run_id}", "#run-header"),
                        ("/ui/runs", "#runs-table"),
                        ("/ui/flows", "#flow-hostile")):
        page.go(path)
        page.wait(lambda: "<img" in page.text(where) or "<script" in page.text(where),
                  f"the markup shown as text in {where} of {path}")
        assert page.js("return window.__xss") is None, path
        assert page.js("return document.images.length") == 0, path
        scripts = page.js("return [...document.scripts].map(s => s.getAttribute('src'))")
        assert all(s and s.startswith("/ui/static/") for s in scripts), (path, scripts)
    # Nothing the pages do needs what the CSP forbids.
    blocked = [e["message"] for e in page.driver.get_log("browser")
               if "Content Security Policy" in e["message"]]
    assert blocked == []


def test_schedules_and_pools_pages(page, ui_server):
    for path, api in (("/ui/schedules", "/schedules"), ("/ui/pools", "/pools")):
        page.go(path)
        status, _ = ui_server.api("GET", api)
        state = "[data-admin-state]"
        page.wait(lambda: page.text(state) != "Loading…" or page.css("#admin table"),
                  f"{path} loaded")
        if status == 404:
            assert "not available" in page.text(state)
        else:
            assert page.css("#admin table") or "No " in page.text(state)


def test_runs_page_filters_and_the_flows_page(page, ui_server):
    from selenium.webdriver.support.ui import Select

    run_id = ui_server.trigger("flaky")
    # Failed, or completed once test_retry_a_failed_step has opened its gate.
    ended = ui_server.wait_run(run_id, {"failed", "completed"})["status"]
    page.go("/ui/runs")
    Select(page.css("select[name=flow]")[0]).select_by_value("flaky")
    Select(page.css("select[name=status]")[0]).select_by_value(ended)
    page.css(".filters button")[0].click()
    page.wait(lambda: "flow=flaky" in page.driver.current_url, "the filtered page")
    rows = page.js("return [...document.querySelectorAll('tr[data-run-id]')]"
                   ".map(r => [r.dataset.runId, r.dataset.status])")
    assert rows[0] == [run_id, ended]  # newest first
    assert all(status == ended for _, status in rows)
    _, listed = ui_server.api("GET", f"/runs?flowName=flaky&status={ended}&limit=25")
    assert [r for r, _ in rows] == [r["id"] for r in listed["runs"]]
    # The flows page: what each flow is, and its last run.
    page.go("/ui/flows")
    card = "#flow-flaky"
    assert "shaky" in page.text(card)
    _, latest = ui_server.api("GET", "/runs?flowName=flaky&limit=1")
    assert page.css(f"{card} a[href='/ui/runs/{latest['runs'][0]['id']}']")
    assert page.text("#flow-hostile h2").count("<img") == 1  # the title, as text
    # Times are shown in the browser's zone, UTC on hover.
    title = page.attr(f"{card} time", "title")
    assert title.endswith(" UTC") and page.text(f"{card} time") != title


def test_keyboard_reaches_the_graph_and_its_steps(page, ui_server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    run_id = ui_server.trigger("flaky")
    ui_server.wait_run(run_id, {"failed", "completed"})
    page.go(f"/ui/runs/{run_id}")
    focused = "return document.activeElement.closest('g[data-step-id]')?.dataset.stepId"
    for _ in range(60):
        ActionChains(page.driver).send_keys(Keys.TAB).perform()
        if page.js(focused):
            break
    step_id = page.js(focused)
    assert step_id in ("shaky", "after")
    ActionChains(page.driver).send_keys(Keys.ENTER).perform()
    page.wait(lambda: page.driver.current_url.endswith(f"/steps/{step_id}"), "the step page")
    # Light and dark both come from the system's choice.
    page.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    dark = page.js("return getComputedStyle(document.body).backgroundColor")
    page.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "light"}]})
    light = page.js("return getComputedStyle(document.body).backgroundColor")
    assert dark != light


def test_pause_resume_and_backfill_a_schedule(page, ui_server):
    _needs(ui_server, "/schedules", "schedules (SPEC §5)")
    page.go("/ui/flows")
    page.wait(lambda: "06:00" in page.text("[data-schedule-for=timed]")
              or "next" in page.text("[data-schedule-for=timed]"), "the next fire time")
    page.go("/ui/schedules")
    row = "tr[data-flow=timed]"
    page.wait(lambda: page.css(row + " [data-action=pause]"), "the schedule's row")
    page.click_and_confirm(row + " [data-action=pause]")
    page.wait(lambda: page.css(row + " [data-action=resume]"), "the paused schedule")
    assert ui_server.api("GET", "/flows/timed/schedule")[1]["paused"] is True
    page.click_and_confirm(row + " [data-action=resume]")
    page.wait(lambda: page.css(row + " [data-action=pause]"), "the resumed schedule")
    assert ui_server.api("GET", "/flows/timed/schedule")[1]["paused"] is False
    # A backfill of three days: previewed (nothing made), then started.
    page.js("const f = document.querySelector('[data-backfill-form]');"
            "f.flow.value = 'timed'; f.from.value = '2026-01-01T00:00:00';"
            "f.to.value = '2026-01-03T23:00:00';")
    result = "[data-backfill-result]"
    page.css("[data-backfill-preview]")[0].click()
    page.wait(lambda: "Would create 3 runs" in page.text(result), "the dry run")
    assert ui_server.api("GET", "/runs?flowName=timed")[1]["pagination"]["total"] == 0
    page.click_and_confirm("[data-backfill-run]")
    page.wait(lambda: "Created 3 runs" in page.text(result), "the backfill")
    ui_server.wait(lambda: ui_server.api("GET", "/runs?flowName=timed")[1]
                   ["pagination"]["total"] == 3, what="three backfill runs")


def test_pools_page_shows_slots_and_use(page, ui_server):
    _needs(ui_server, "/pools", "pools (SPEC §6)")
    status, _ = ui_server.api("PUT", "/pools/gpu", {"slots": 2})
    assert status in (200, 201)
    page.go("/ui/pools")
    page.wait(lambda: page.css("tr[data-pool=gpu]"), "the pool's row")
    assert "2" in page.text("tr[data-pool=gpu] td:nth-child(2)")


def test_phone_width_and_screenshots(page, ui_server):
    """
    The pages fit a phone's width; and the README's screenshots (written
    to C{MAXQ_UI_SCREENSHOTS} when set, e.g. C{docs/}).
    """
    out = Path(os.environ.get("MAXQ_UI_SCREENSHOTS") or ui_server.root)
    run_id = ui_server.trigger("showcase")
    ui_server.wait_step(run_id, "publish", {"running"})
    driver = page.driver
    driver.set_window_size(1280, 900)
    page.go("/ui/runs")
    driver.save_screenshot(str(out / "ui-runs.png"))
    page.go(f"/ui/runs/{run_id}")
    assert len(page.css("g.node[data-step-id]")) == 8
    assert len(page.css("g.edges path")) == 9
    assert page.js("return document.documentElement.dataset.graphReady") == "1"
    driver.save_screenshot(str(out / "ui-run.png"))
    page.go(f"/ui/runs/{run_id}/steps/analyse-1")
    page.wait(lambda: "chunk 3 of 3" in page.text("#out-stdout"), "the output")
    driver.save_screenshot(str(out / "ui-step.png"))
    try:
        driver.set_window_size(390, 844)
        for path in ("/ui/runs", f"/ui/runs/{run_id}", "/ui/flows"):
            page.go(path)
            wide = page.js("return document.documentElement.scrollWidth - window.innerWidth")
            assert wide <= 1, (path, wide)
    finally:
        driver.set_window_size(1280, 900)
        ui_server.open_gate("showcase-publish")
