"""
Operations without a network: /health's stalled scheduler on a
L{task.Clock}, the metrics' counting, the log observers, and the
notification settings, signing and timing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.logger import Logger, LogPublisher
from twisted.python import usage
from prometheus_client.parser import text_string_to_metric_families

from maxq import flowconfig, logs, metrics, notify
from maxq.api.app import Api
from maxq.tap import Options
from tests.fakes import resolved
from tests.fakes import World


# ----------------------------------------------------------------- health


def _health(api):
    client = StubTreq(api.app.resource())
    d = client.get("http://x/health")
    client.flush()
    response = resolved(d)
    body = resolved(client.json_content(response))
    return response.code, body


def test_health_reports_a_stalled_scheduler_after_ten_intervals(tmp_path):
    world = World(tmp_path)
    try:
        api = Api(world.engine, world.store, world.clock, world.scheduler)
        code, body = _health(api)
        assert code == 200 and body["services"]["scheduler"]["status"] == "running"
        # A pass that never ends: the claim hangs (a wedged database call).
        hung = defer.Deferred()
        world.engine.claim = lambda *args: hung
        world.clock.advance(0.2)
        world.clock.advance(1.0)
        code, body = _health(api)
        assert code == 200, "five intervals are not a stall"
        world.clock.advance(1.1)
        code, body = _health(api)
        assert code == 503
        assert body["status"] == "unhealthy"
        assert body["services"]["scheduler"]["status"] == "stalled"
        assert body["services"]["scheduler"]["lastPassAgoMs"] == 2300
        assert body["services"]["database"] == "healthy"
        world.engine.claim = type(world.engine).claim.__get__(world.engine)
        hung.callback(([], []))
        world.clock.advance(0.2)
        code, body = _health(api)
        assert code == 200 and body["services"]["scheduler"]["lastPassAgoMs"] == 0
    finally:
        world.stop()


def test_health_is_503_when_the_database_does_not_answer(tmp_path):
    world = World(tmp_path)
    try:
        api = Api(world.engine, world.store, world.clock, world.scheduler)
        world.store.ping = lambda: defer.succeed(False)
        code, body = _health(api)
        assert code == 503 and body["services"]["database"] == "unhealthy"
    finally:
        world.store.ping = type(world.store).ping.__get__(world.store)
        world.stop()


# ----------------------------------------------------------------- metrics


def _samples(m):
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}


def test_counting_is_by_flow_and_status_with_cached_children():
    m = metrics.Metrics(version="9.9")
    m.count([metrics.tally(metrics.RUN_STARTED, "a"),
             metrics.tally(metrics.RUN_FINISHED, "a", "failed", 1000, 3500),
             metrics.tally(metrics.STEP_STARTED, "a", None, 1000, 1010),
             metrics.tally(metrics.STEP_FINISHED, "a", "completed", 0, 20)] * 2)
    m.schedule_fired("nightly", "started")
    m.notification_attempted("delivered")
    m.http_request("GET", "/api/v1/runs/<run_id>", 200, 0.001)
    found = _samples(m)
    assert found[("maxq_runs_started_total", frozenset({("flow", "a")}))] == 2
    assert found[("maxq_runs_finished_total",
                  frozenset({("flow", "a"), ("status", "failed")}))] == 2
    assert found[("maxq_run_duration_seconds_sum", frozenset({("flow", "a")}))] == 5.0
    assert found[("maxq_step_queue_wait_seconds_count", frozenset({("flow", "a")}))] == 2
    assert found[("maxq_schedule_fires_total",
                  frozenset({("flow", "nightly"), ("outcome", "started")}))] == 1
    assert found[("maxq_build_info", frozenset({("version", "9.9")}))] == 1
    # The child is made once and then found by a dict lookup.
    assert len(m._children["runs_started"]) == 1


def test_two_servers_in_one_process_count_apart():
    one, two = metrics.Metrics(), metrics.Metrics()
    one.count([metrics.tally(metrics.RUN_STARTED, "a")])
    assert ("maxq_runs_started_total", frozenset({("flow", "a")})) not in _samples(two)


# -------------------------------------------------------------------- logs


def _emit(observer, **kwargs):
    publisher = LogPublisher(observer)
    log = Logger(namespace="maxq.test", observer=publisher)
    return log


def test_json_lines_parse_one_by_one_with_the_run_step_and_flow():
    out = io.StringIO()
    log = _emit(logs.JsonLineObserver(out))
    log.info("step {step_id} of {run_id} started", run_id="r1", step_id="s1", flow="f")
    log.warn("plain warning with \"quotes\"\nand a second line")
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("it broke")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    first = records[0]
    assert first["message"] == "step s1 of r1 started"
    assert first["level"] == "info" and first["logger"] == "maxq.test"
    assert (first["runId"], first["stepId"], first["flowName"]) == ("r1", "s1", "f")
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert records[1]["level"] == "warn" and "runId" not in records[1]
    assert records[2]["level"] == "critical" and "ZeroDivisionError" in records[2]["message"]


def test_journald_lines_carry_the_syslog_priority():
    out = io.StringIO()
    log = _emit(logs.TextLineObserver(out, priorities=True))
    log.info("hello")
    log.error("bad\nworse")
    assert out.getvalue().splitlines() == [
        "<6>[maxq.test#info] hello", "<3>[maxq.test#error] bad", "<3>[maxq.test#error] worse"]


def test_twistd_gets_our_observer_for_json_and_under_systemd(tmp_path):
    class Parent(dict):
        pass

    for env, expected in (({"MAXQ_LOG_FORMAT": "json"}, "maxq.logs.json_observer"),
                          ({"JOURNAL_STREAM": "8:1"}, "maxq.logs.journal_observer"),
                          ({}, None)):
        options = Options(env={"MAXQ_FLOWS_ROOT": str(tmp_path), **env})
        options.parent = Parent()
        options.parseOptions([])
        assert options.parent.get("logger") == expected
    options = Options(env={"MAXQ_FLOWS_ROOT": str(tmp_path)})
    options.parent = Parent()
    options.parseOptions(["--log-format", "json"])
    assert options.parent["logger"] == "maxq.logs.json_observer"
    with pytest.raises(usage.UsageError, match="text or json"):
        Options(env={"MAXQ_FLOWS_ROOT": str(tmp_path)}).parseOptions(
            ["--log-format", "xml"])


# ------------------------------------------------------------ notifications


def _section(text: str) -> flowconfig.FlowConfig:
    import yaml
    return flowconfig.parse(yaml.safe_load(text))


def test_notify_section_reads_targets_and_sla():
    config = _section("notify:\n  - url: https://h.example/x\n    on: [failed, sla_missed]\n"
                      "    secretEnv: HOOK_SECRET\nsla: 30m\n")
    assert config.error is None
    section = config.section("notify")
    assert section["sla_ms"] == 30 * 60_000
    (target,) = section["targets"]
    assert target.on == {"failed", "sla_missed"} and target.secret_env == "HOOK_SECRET"


@pytest.mark.parametrize("text, names", [
    ("notify:\n  - url: ftp://h/x\n", "notify[0].url"),
    ("notify:\n  - url: file:///etc/passwd\n", "notify[0].url"),
    ("notify:\n  - url: http://h/x\n    on: [started]\n", "notify[0].on"),
    ("notify:\n  - url: http://h/x\n    secretEnv: 'a b'\n", "notify[0].secretEnv"),
    ("notify:\n  - url: http://h/x\n    headers: {}\n", "notify[0]"),
    ("notify: http://h/x\n", "notify must be a list"),
    ("sla: soon\n", "sla must be a duration"),
    ("sla: 0s\n", "sla must be longer"),
])
def test_bad_notify_settings_name_the_key(text, names):
    config = _section(text)
    assert names in config.error
    assert config.section("notify") == {}


def test_durations_and_retry_delays():
    assert notify.retry_delays_ms("5s,5m,30m,2h,250ms,1d") == [
        5000, 300_000, 1_800_000, 7_200_000, 250, 86_400_000]
    with pytest.raises(ValueError, match="MAXQ_NOTIFY_RETRY_DELAYS"):
        notify.retry_delays_ms("5s,later")


def test_signature_is_standard_webhooks():
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    msg_id, timestamp = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    # The Standard Webhooks specification's own example.
    assert notify.signature(secret, msg_id, timestamp, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    raw = notify.signature("plain", "m", 1, b"x")
    expected = base64.b64encode(hmac.new(b"plain", b"m.1.x", hashlib.sha256).digest())
    assert raw == "v1," + expected.decode()


def test_retry_after_is_seconds_or_a_date():
    assert notify.retry_after_ms(b"120", 0) == 120_000
    assert notify.retry_after_ms(b"Thu, 01 Jan 1970 00:01:00 GMT", 30_000) == 30_000
    assert notify.retry_after_ms(b"whenever", 0) is None
    assert notify.retry_after_ms(None, 0) is None


def test_observability_examples_name_only_metrics_that_exist():
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent / "examples" / "observability"
    rules = yaml.safe_load((root / "maxq-alerts.yml").read_text())
    scrape = yaml.safe_load((root / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["authorization"]["credentials_file"]
    dashboard = json.loads((root / "grafana-dashboard.json").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"MaxQRunsFailing", "MaxQPendingStepsWaiting", "MaxQServerDown",
            "MaxQSlaMissed"} <= alerts
    families = {f.name for f in
                text_string_to_metric_families(metrics.Metrics().render().decode())}
    named = {n for e in exprs for n in re.findall(r"\b((?:maxq|process)_[a-z_]+)", e)}
    assert len(named) > 15
    for name in named:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert name in families or base in families, name


def test_our_exposition_reads_as_prometheus_clients_own():
    from prometheus_client import generate_latest

    m = metrics.Metrics()
    m.count([metrics.tally(metrics.STEP_FINISHED, "f", "completed", 0, 17),
             metrics.tally(metrics.RUN_STARTED, 'odd "flow"\\\n')])
    m.http_request("GET", "/api/v1/runs/<run_id>", 404, 0.0003)
    m.cluster_oldest_pending.set(float("inf"))

    def parsed(text):
        return [(f.name, f.type, f.documentation,
                 [(s.name, s.labels, s.value) for s in f.samples
                  if not s.name.startswith("process_")])
                for f in text_string_to_metric_families(text.decode())]

    assert parsed(m.render()) == parsed(generate_latest(m.registry))
    assert parsed(m.render()) == parsed(m.render())  # with the series cached
    # The way through registry.collect(), kept for other collectors.
    assert parsed(metrics.exposition(m.registry)) == parsed(generate_latest(m.registry))
    assert b"process_cpu_seconds_total" in m.render()
