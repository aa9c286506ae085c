"""
L{maxq.tap}: the twistd options (environment first, options on top) and
L{maxq.tap.makeService}.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.python import usage

from maxq import tap


@pytest.fixture
def env(tmp_path):
    return {"MAXQ_FLOWS_ROOT": str(tmp_path)}


def parse(env, *argv) -> tap.Options:
    options = tap.Options(env=env)
    options.parseOptions(list(argv))
    return options


def test_options_cover_spec_settings():
    """
    Every setting of SPEC section 4 except the API key (a secret has no
    business on a command line, where ps shows it) has an option, plus
    --listen.
    """
    names = {p[0] for p in tap.Options.optParameters}
    assert names == {
        "flows-root", "sqlite-path", "database-url", "port", "host",
        "scheduler-interval-ms", "scheduler-batch-size",
        "max-concurrent-steps", "abort-grace-ms", "max-log-capture",
        "api-url", "worker-id", "log-format", "listen",
    }
    assert all(p[2] is None for p in tap.Options.optParameters)


def test_options_environment_only(env, tmp_path):
    env["MAXQ_PORT"] = "5000"
    options = parse(env)
    assert options.config.port == 5000
    assert options.config.flows_root == tmp_path.resolve()
    assert options["listen"] is None


def test_options_override_environment(env, tmp_path):
    env.update({"MAXQ_PORT": "5000", "MAXQ_MAX_CONCURRENT_STEPS": "7"})
    other = tmp_path / "other"
    other.mkdir()
    options = parse(env, "--port", "4000", "--flows-root", str(other))
    assert options.config.port == 4000
    assert options.config.flows_root == other.resolve()
    # Not given on the command line: the environment still counts.
    assert options.config.max_concurrent_steps == 7


SAMPLES = {
    "flows-root": ("/tmp", Path("/tmp").resolve()),
    "sqlite-path": ("/tmp/x.db", Path("/tmp/x.db")),
    "database-url": ("postgresql://localhost/maxq", "postgresql://localhost/maxq"),
    "port": ("0", 0),
    "host": ("0.0.0.0", "0.0.0.0"),
    "scheduler-interval-ms": ("25", 25),
    "scheduler-batch-size": ("2", 2),
    "max-concurrent-steps": ("3", 3),
    "abort-grace-ms": ("100", 100),
    "max-log-capture": ("4096", 4096),
    "api-url": ("http://h:1/api/v1", "http://h:1/api/v1"),
    "worker-id": ("w-1", "w-1"),
    "log-format": ("json", "json"),
}


@pytest.mark.parametrize("setting", tap.SETTINGS, ids=lambda s: s.option)
def test_options_each_setting(env, setting):
    given, expected = SAMPLES[setting.option]
    options = parse(env, f"--{setting.option}={given}")
    assert getattr(options.config, setting.field) == expected


def test_options_flows_root_from_option_alone(tmp_path):
    options = parse({}, "--flows-root", str(tmp_path))
    assert options.config.flows_root == tmp_path.resolve()


def test_options_missing_flows_root():
    with pytest.raises(usage.UsageError, match="MAXQ_FLOWS_ROOT"):
        parse({})


@pytest.mark.parametrize("option", [
    "port", "scheduler-interval-ms", "scheduler-batch-size",
    "max-concurrent-steps", "abort-grace-ms", "max-log-capture",
])
def test_options_not_an_integer(env, option):
    with pytest.raises(usage.UsageError, match=f"--{option} must be an integer"):
        parse(env, f"--{option}=lots")


def test_options_port_out_of_range_names_the_option(env):
    with pytest.raises(usage.UsageError, match="--port must be between"):
        parse(env, "--port=70000")


def test_options_bad_environment_names_the_variable(env):
    env["MAXQ_PORT"] = "70000"
    with pytest.raises(usage.UsageError, match="MAXQ_PORT"):
        parse(env)


def test_options_bad_environment_integer(env):
    env["MAXQ_MAX_CONCURRENT_STEPS"] = "many"
    with pytest.raises(usage.UsageError, match="MAXQ_MAX_CONCURRENT_STEPS"):
        parse(env)


def test_options_zero_concurrency(env):
    with pytest.raises(usage.UsageError, match="--max-concurrent-steps"):
        parse(env, "--max-concurrent-steps=0")


def test_options_bad_database_url(env):
    with pytest.raises(usage.UsageError, match="postgresql://"):
        parse(env, "--database-url=mysql://localhost/x")


def test_options_unknown_option(env):
    with pytest.raises(usage.UsageError):
        parse(env, "--colour=blue")


def test_options_listen(env):
    options = parse(env, "--listen", "systemd:domain=INET:index=0")
    assert options["listen"] == "systemd:domain=INET:index=0"


def test_options_listen_empty(env):
    with pytest.raises(usage.UsageError, match="--listen"):
        parse(env, "--listen=  ")


def test_options_default_env_is_os_environ(monkeypatch, tmp_path):
    monkeypatch.setenv("MAXQ_FLOWS_ROOT", str(tmp_path))
    monkeypatch.setenv("MAXQ_PORT", "3999")
    options = tap.Options()
    options.parseOptions([])
    assert options.config.port == 3999


@pytest.fixture
def fake_service(monkeypatch):
    """
    Stand in for L{maxq.service} so that makeService can be checked without
    building a server.
    """
    calls = []

    def build_service(config, reactor=None, **kwargs):
        service = types.SimpleNamespace(listening=defer.Deferred())
        calls.append((config, reactor, kwargs, service))
        return service

    module = types.ModuleType("maxq.service")
    module.build_service = build_service
    monkeypatch.setitem(sys.modules, "maxq.service", module)
    return calls


def test_make_service_passes_config_and_global_reactor(env, fake_service):
    from twisted.internet import reactor

    options = parse(env, "--port=0")
    service = tap.makeService(options)
    [(config, given_reactor, kwargs, built)] = fake_service
    assert service is built
    assert options.service is built
    assert config is options.config
    assert given_reactor is reactor
    assert kwargs == {}


def test_make_service_stops_reactor_if_start_fails(env, fake_service, monkeypatch):
    """
    Under twistd a server that cannot listen ends the process instead of
    idling; the start failure, logged by the service, is not reported again.
    """
    from twisted.internet import reactor

    stopped = []
    monkeypatch.setattr(reactor, "callWhenRunning", lambda f: stopped.append(f))
    service = tap.makeService(parse(env))
    service.listening.errback(RuntimeError("port taken"))
    failures = []
    service.listening.addErrback(failures.append)
    assert failures == []
    assert len(stopped) == 1


def test_make_service_passes_listen_endpoint(env, fake_service):
    options = parse(env, "--listen=tcp:0:interface=127.0.0.1")
    tap.makeService(options)
    [(_, _, kwargs, _)] = fake_service
    assert kwargs == {"endpoint_description": "tcp:0:interface=127.0.0.1"}
