"""
SPEC §8 through real HTTP on both backends: the Prometheus metrics after
known work, /health's components, and notifications to a real local
receiver (signature, retries with the same webhook-id, 410, the retry
route) and SLAs.
"""

from __future__ import annotations

import json

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from .api_support import OK_SH, stage, staged_flow_sh, step
from .notify_support import Receiver, verify
from .test_multi_server import private_postgres  # noqa: F401 (a fixture)

FAIL_SH = "exit 3\n"
SECRET = "whsec_" + "c2VjcmV0LWZvci10ZXN0cw=="   # base64 of "secret-for-tests"


def samples(text: str) -> dict:
    """
    {(sample name, frozenset of labels): value}.
    """
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(server) -> tuple[dict, str]:
    status, text = await server.get("/metrics", prefix=False)
    assert status == 200, text
    return samples(text), text


def two_step_flow(bad: bool) -> str:
    steps = [step("a", "ok"), step("b", "bad" if bad else "ok"), step("c", "ok")]
    return staged_flow_sh({"": stage("only", steps, final=True)})


async def test_metrics_count_known_work_by_flow_and_status(maxq):
    server = await maxq.start(metrics_cluster_interval_ms=100)
    for name, bad in (("good", False), ("poor", True)):
        server.flows.add(name, two_step_flow(bad), steps={"ok": OK_SH, "bad": FAIL_SH})
    runs = [await server.trigger("good"), await server.trigger("good"),
            await server.trigger("poor")]
    ends = [await server.wait_run(r["id"], timeout=60) for r in runs]
    assert [r["status"] for r in ends] == ["completed", "completed", "failed"]

    found, text = await scrape(server)
    assert value(found, "maxq_runs_started_total", flow="good") == 2
    assert value(found, "maxq_runs_started_total", flow="poor") == 1
    assert value(found, "maxq_runs_finished_total", flow="good", status="completed") == 2
    assert value(found, "maxq_runs_finished_total", flow="poor", status="failed") == 1
    assert value(found, "maxq_runs_finished_total", flow="poor", status="completed") == 0
    assert value(found, "maxq_steps_started_total", flow="good") == 6
    assert value(found, "maxq_steps_started_total", flow="poor") == 3
    assert value(found, "maxq_steps_finished_total", flow="good", status="completed") == 6
    assert value(found, "maxq_steps_finished_total", flow="poor", status="completed") == 2
    assert value(found, "maxq_steps_finished_total", flow="poor", status="failed") == 1
    assert value(found, "maxq_run_duration_seconds_count", flow="good") == 2
    assert value(found, "maxq_step_duration_seconds_count", flow="good") == 6
    assert value(found, "maxq_step_queue_wait_seconds_count", flow="poor") == 3
    assert value(found, "maxq_step_duration_seconds_bucket", flow="good", le="+Inf") == 6
    assert value(found, "maxq_step_slots") == server.config.max_concurrent_steps
    assert value(found, "maxq_steps_running") == 0
    assert ("maxq_build_info", frozenset({("version", __import__("maxq").__version__)})) \
        in found
    assert value(found, "process_resident_memory_bytes") > 0
    # Requests are labelled by their route's template, never their path.
    routes = {dict(labels).get("route") for name, labels in found
              if name == "maxq_http_requests_total"}
    assert "/api/v1/runs/<run_id>" in routes
    assert value(found, "maxq_http_requests_total", method="POST",
                 route="/api/v1/flows/<flow:flow>/runs", code="201") == 3
    for run in runs:
        assert run["id"] not in text
    for name in ("maxq_schedule_fires_total", "maxq_notifications_total",
                 "maxq_event_stream_clients", "maxq_http_request_duration_seconds"):
        assert f"# TYPE {name.removesuffix('_total')}" in text

    async def cluster():
        found, _ = await scrape(server)
        done = (value(found, "maxq_cluster_runs", status="completed") == 2
                and value(found, "maxq_cluster_runs", status="failed") == 1)
        return found if done else None

    # The figures are read on a timer: wait for a reading after the work.
    found = await server.wait_for(cluster, timeout=60, what="the cluster figures")
    assert value(found, "maxq_cluster_runs", status="running") == 0
    assert value(found, "maxq_cluster_steps", status="completed") == 8
    # On PostgreSQL the test's schema may still list a server of an earlier
    # test within its heartbeat timeout.
    servers = value(found, "maxq_cluster_servers")
    assert servers >= 1 if server.service.store.peers.shared else servers == 1
    assert value(found, "maxq_cluster_oldest_pending_step_age_seconds") == 0


async def test_metrics_need_the_api_key_when_one_is_set(maxq):
    server = await maxq.start(api_keys=("k" * 32,))
    status, _ = await server.get("/metrics", prefix=False, headers={"Authorization": ""})
    assert status == 401
    found, _ = await scrape(server)
    assert value(found, "maxq_step_slots") == server.config.max_concurrent_steps


async def test_cluster_figures_can_be_switched_off(maxq):
    server = await maxq.start(metrics_cluster_interval_ms=0)
    assert server.service.cluster_figures is None
    _, text = await scrape(server)
    assert "maxq_cluster_runs{" not in text


async def test_health_reports_each_component_with_its_figure(maxq):
    server = await maxq.start()
    server.flows.add("nightly", "exit 0\n", flow_yaml="schedule: '0 2 * * *'\n")
    server.flows.add("manual", "exit 0\n")
    await server.wait_for(lambda: _passed(server), what="a scheduler pass")
    status, health = await server.get("/health", prefix=False)
    assert status == 200, health
    services = health["services"]
    assert services["database"] == "healthy"
    assert services["scheduler"]["status"] == "running"
    assert services["scheduler"]["lastPassAgoMs"] >= 0
    assert services["schedules"] == {"status": "healthy", "count": 1, "paused": 0}
    if server.service.store.peers.shared:
        assert services["workers"]["status"] == "healthy"
        assert services["workers"]["live"] >= 1
    else:
        assert "workers" not in services


async def _passed(server):
    return server.service.scheduler.last_pass_at is not None


# ------------------------------------------------------------ notifications


@pytest_twisted.async_yield_fixture()
async def receiver(reactor):
    r = await Receiver(reactor).start()
    yield r
    await r.stop()


def notify_yaml(url: str, on: str = "[completed, failed]", extra: str = "") -> str:
    return (f"notify:\n  - url: {url}\n    on: {on}\n    secretEnv: MAXQ_TEST_HOOK_SECRET\n"
            + extra)


async def notifications(server, run_id):
    status, body = await server.get(f"/runs/{run_id}/notifications")
    assert status == 200, body
    return body["deliveries"]


async def test_a_failed_run_is_notified_signed_and_retried_until_2xx(
        maxq, receiver, monkeypatch):
    monkeypatch.setenv("MAXQ_TEST_HOOK_SECRET", SECRET)
    server = await maxq.start(env={"MAXQ_NOTIFY_RETRY_DELAYS": "50ms,50ms,50ms"})
    server.flows.add("f", two_step_flow(True), steps={"ok": OK_SH, "bad": FAIL_SH},
                     flow_yaml=notify_yaml(receiver.url))
    receiver.answers = [500, 503]
    run = await server.trigger("f")
    await server.wait_run(run["id"])

    async def delivered():
        found = await notifications(server, run["id"])
        return found if found and found[0]["status"] == "delivered" else None

    (delivery,) = await server.wait_for(delivered, what="the delivery")
    assert delivery["attempts"] == 3
    assert delivery["lastStatusCode"] == 200
    assert delivery["type"] == "run.failed"
    assert delivery["url"] == receiver.url
    assert delivery["deliveredAt"] is not None and delivery["nextAttemptAt"] is None
    assert set(delivery) == {"id", "url", "type", "status", "attempts", "lastStatusCode",
                             "lastError", "nextAttemptAt", "deliveredAt"}
    assert len(receiver.requests) == 3
    ids = {r["headers"]["webhook-id"] for r in receiver.requests}
    assert ids == {delivery["id"]}
    for request in receiver.requests:
        assert verify(SECRET, request["headers"], request["body"])
        assert not verify("whsec_b3RoZXI=", request["headers"], request["body"])
    body = receiver.requests[-1]["json"]
    assert body["type"] == "run.failed"
    assert body["data"]["id"] == run["id"] and body["data"]["status"] == "failed"
    assert "stages" not in body["data"]
    assert body["timestamp"].endswith("Z")
    # The secret is nowhere the API shows.
    _, raw = await server.get(f"/runs/{run['id']}/notifications", headers={})
    assert SECRET not in json.dumps(raw)

    # Sent once more on request, with the same id.
    status, again = await server.post(f"/notifications/{delivery['id']}/retry")
    assert status == 202 and again["id"] == delivery["id"]
    await server.wait_for(lambda: _count(receiver, 4), what="the resend")
    assert receiver.requests[-1]["headers"]["webhook-id"] == delivery["id"]
    status, missing = await server.post("/notifications/msg_nothing/retry")
    assert status == 404 and missing["code"] == "NOTIFICATION_NOT_FOUND"
    # Each delivery is an event of the run (SPEC §7), without its URL.
    status, page = await server.get(f"/runs/{run['id']}/events?type=notification")
    assert status == 200
    sent = [e for e in page["events"] if e["status"] == "delivered"]
    assert sent and sent[0]["data"]["id"] == delivery["id"]
    assert sent[0]["data"]["attempts"] == 3 and sent[0]["data"]["statusCode"] == 200
    assert receiver.url not in json.dumps(page)


async def _count(receiver, n):
    return len(receiver.requests) >= n


async def test_a_410_stops_the_delivery(maxq, receiver, monkeypatch):
    monkeypatch.setenv("MAXQ_TEST_HOOK_SECRET", SECRET)
    server = await maxq.start(env={"MAXQ_NOTIFY_RETRY_DELAYS": "20ms,20ms"})
    server.flows.add("f", two_step_flow(False), steps={"ok": OK_SH},
                     flow_yaml=notify_yaml(receiver.url, "[completed]"))
    receiver.answers = [410]
    run = await server.trigger("f")
    await server.wait_run(run["id"])

    async def stopped():
        found = await notifications(server, run["id"])
        return found if found and found[0]["status"] == "failed" else None

    (delivery,) = await server.wait_for(stopped, what="the delivery to stop")
    assert delivery["attempts"] == 1 and delivery["lastStatusCode"] == 410
    assert len(receiver.requests) == 1
    assert receiver.requests[0]["json"]["type"] == "run.completed"


async def test_server_wide_target_and_events_not_asked_for(maxq, receiver):
    server = await maxq.start(env={"MAXQ_NOTIFY_URL": receiver.url,
                                   "MAXQ_NOTIFY_SECRET": "raw-secret"})
    server.flows.add("good", two_step_flow(False), steps={"ok": OK_SH})
    server.flows.add("poor", two_step_flow(True), steps={"ok": OK_SH, "bad": FAIL_SH})
    good = await server.trigger("good")
    poor = await server.trigger("poor")
    await server.wait_run(good["id"])
    await server.wait_run(poor["id"])
    await server.wait_for(lambda: _count(receiver, 1), what="the failure's delivery")
    # MAXQ_NOTIFY_ON defaults to failed: the completed run sends nothing.
    assert await notifications(server, good["id"]) == []
    (request,) = receiver.requests
    assert request["json"]["data"]["id"] == poor["id"]
    assert verify("raw-secret", request["headers"], request["body"])


async def test_a_missed_sla_is_notified_once(maxq, receiver, monkeypatch):
    monkeypatch.setenv("MAXQ_TEST_HOOK_SECRET", SECRET)
    server = await maxq.start()
    server.flows.add(
        "slow", staged_flow_sh({"": stage("only", [step("a", "nap")], final=True)}),
        steps={"nap": "sleep 1.5\n"},
        flow_yaml=notify_yaml(receiver.url, "[sla_missed, completed]", "sla: 300ms\n"))
    run = await server.trigger("slow")
    await server.wait_run(run["id"])
    await server.wait_for(lambda: _count(receiver, 2), what="both deliveries")
    types = [r["json"]["type"] for r in receiver.requests]
    assert types == ["run.sla_missed", "run.completed"]
    sla = receiver.requests[0]["json"]["data"]
    assert sla["id"] == run["id"] and sla["status"] == "running"
    # Checked again: nothing more.
    await server.service.sla.check()
    status, logs = await server.get(f"/runs/{run['id']}/logs?limit=1000")
    events = [e for e in logs["logs"] if (e.get("metadata") or {}).get("event")
              == "run_sla_missed"]
    assert len(events) == 1
    assert [d["type"] for d in await notifications(server, run["id"])] == [
        "run.sla_missed", "run.completed"]
    found, _ = await scrape(server)
    assert value(found, "maxq_sla_missed_total", flow="slow") == 1
    status, page = await server.get(f"/runs/{run['id']}/events?type=run")
    missed = [e for e in page["events"] if e["data"].get("change") == "sla_missed"]
    assert len(missed) == 1 and missed[0]["data"]["slaMs"] == 300
    assert value(found, "maxq_notifications_total", outcome="delivered") == 2


async def test_health_is_503_while_postgres_is_down(private_postgres, tmp_path, reactor):
    from twisted.internet import threads

    from .conftest import ServerFactory

    factory = ServerFactory(tmp_path, reactor, "postgres", private_postgres.url)
    try:
        server = await factory.start()
        status, health = await server.get("/health", prefix=False)
        assert status == 200 and health["services"]["workers"]["live"] == 1
        # Stopped, not removed: the fixture removes it at the end.
        await threads.deferToThread(private_postgres._ctl, "stop", "-m", "immediate")
        status, health = await server.get("/health", prefix=False)
        assert status == 503, health
        assert health["status"] == "unhealthy"
        assert health["services"]["database"] == "unhealthy"
        assert "workers" not in health["services"]
    finally:
        server.service.stop_now()
        await factory.stop_all()


async def test_cli_shows_a_runs_notifications(maxq, receiver):
    from tests.cli_support import run_cli

    server = await maxq.start(env={"MAXQ_NOTIFY_URL": receiver.url,
                                   "MAXQ_NOTIFY_ON": "completed"})
    server.flows.add("good", two_step_flow(False), steps={"ok": OK_SH})
    run = await server.trigger("good")
    await server.wait_run(run["id"])
    await server.wait_for(lambda: _count(receiver, 1), what="the delivery")

    async def delivered():
        return (await notifications(server, run["id"]))[0]["status"] == "delivered"

    await server.wait_for(delivered, what="the delivery recorded")
    result = await run_cli(server.reactor, "notifications", run["id"], url=server.url)
    assert result.code == 0, result
    header, line = result.out.splitlines()
    assert header.split()[:4] == ["ID", "TYPE", "STATUS", "ATTEMPTS"]
    assert line.split()[1:5] == ["run.completed", "delivered", "1", "200"]
    result = await run_cli(server.reactor, "--json", "notifications", run["id"],
                           url=server.url)
    assert json.loads(result.out)["deliveries"][0]["url"] == receiver.url
    result = await run_cli(server.reactor, "notifications", "no-such-run", url=server.url)
    assert result.code != 0


async def test_requests_no_route_answers_are_counted_as_unmatched(maxq):
    server = await maxq.start()
    assert (await server.get("/no/such/thing", prefix=False))[0] == 404
    assert (await server.get("/flows/%ff"))[0] == 400
    found, text = await scrape(server)
    assert value(found, "maxq_http_requests_total", method="GET", route="unmatched",
                 code="404") == 1
    assert value(found, "maxq_http_requests_total", method="GET", route="unmatched",
                 code="400") == 1
    assert "no/such" not in text


async def test_redirects_are_not_followed_and_retry_after_is_honoured(maxq, receiver):
    server = await maxq.start(env={"MAXQ_NOTIFY_URL": receiver.url,
                                   "MAXQ_NOTIFY_ON": "completed",
                                   "MAXQ_NOTIFY_RETRY_DELAYS": "10ms,10ms"})
    server.flows.add("good", two_step_flow(False), steps={"ok": OK_SH})
    receiver.answers = [302, 503]
    receiver.retry_after = 1
    run = await server.trigger("good")
    await server.wait_run(run["id"])

    async def delivered():
        found = await notifications(server, run["id"])
        return found if found and found[0]["status"] == "delivered" else None

    (delivery,) = await server.wait_for(delivered, what="the delivery")
    assert delivery["attempts"] == 3
    assert [r["path"] for r in receiver.requests] == ["/hook"] * 3
    # The 503 asked for a second: the third attempt waited for it, not 10 ms.
    second, third = (int(r["headers"]["webhook-timestamp"]) for r in receiver.requests[1:])
    assert third - second >= 1
