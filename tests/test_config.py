"""
L{maxq.config.Config}: every MAXQ_* setting of SPEC section 4 read from an
environment mapping, with keyword overrides on top.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from maxq.config import Config, ConfigError


@pytest.fixture
def env(tmp_path):
    return {"MAXQ_FLOWS_ROOT": str(tmp_path)}


def test_from_env_defaults(env, tmp_path):
    cfg = Config.from_env(env)
    assert cfg.flows_root == tmp_path.resolve()
    assert cfg.sqlite_path == Path("./data/maxq.db")
    assert cfg.database_url is None
    assert cfg.backend == "sqlite"
    assert cfg.port == 3000
    assert cfg.host == "127.0.0.1"
    assert cfg.scheduler_interval_ms == 200
    assert cfg.scheduler_batch_size == 10
    assert cfg.max_concurrent_steps == 10
    assert cfg.abort_grace_ms == 5000
    assert cfg.max_log_capture == 65536
    assert cfg.api_keys == ()
    assert cfg.api_url is None


def test_from_env_default_worker_id_is_host_and_pid(env):
    cfg = Config.from_env(env)
    host, _, pid = cfg.worker_id.rpartition(":")
    assert host
    assert pid == str(os.getpid())


def test_from_env_reads_every_variable(env, tmp_path):
    env.update({
        "MAXQ_SQLITE_PATH": str(tmp_path / "q.db"),
        "MAXQ_DATABASE_URL": "postgresql://u@localhost/maxq",
        "MAXQ_PORT": "8080",
        "MAXQ_HOST": "0.0.0.0",
        "MAXQ_SCHEDULER_INTERVAL_MS": "50",
        "MAXQ_SCHEDULER_BATCH_SIZE": "3",
        "MAXQ_MAX_CONCURRENT_STEPS": "4",
        "MAXQ_ABORT_GRACE_MS": "0",
        "MAXQ_MAX_LOG_CAPTURE": "1024",
        "MAXQ_API_KEY": "secret",
        "MAXQ_API_URL": "http://maxq.internal:8080/api/v1",
        "MAXQ_WORKER_ID": "worker-7",
    })
    cfg = Config.from_env(env)
    assert cfg.sqlite_path == tmp_path / "q.db"
    assert isinstance(cfg.sqlite_path, Path)
    assert cfg.database_url == "postgresql://u@localhost/maxq"
    assert cfg.backend == "postgres"
    assert cfg.port == 8080
    assert cfg.host == "0.0.0.0"
    assert cfg.scheduler_interval_ms == 50
    assert cfg.scheduler_batch_size == 3
    assert cfg.max_concurrent_steps == 4
    assert cfg.abort_grace_ms == 0
    assert cfg.max_log_capture == 1024
    assert cfg.api_keys == ("secret",)
    assert cfg.api_url == "http://maxq.internal:8080/api/v1"
    assert cfg.worker_id == "worker-7"


def test_from_env_relative_flows_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flows").mkdir()
    cfg = Config.from_env({"MAXQ_FLOWS_ROOT": "flows"})
    assert cfg.flows_root == (tmp_path / "flows").resolve()
    assert cfg.flows_root.is_absolute()


def test_from_env_empty_variable_means_unset(env):
    env.update({"MAXQ_PORT": "", "MAXQ_DATABASE_URL": "", "MAXQ_API_KEY": ""})
    cfg = Config.from_env(env)
    assert cfg.port == 3000
    assert cfg.database_url is None
    assert cfg.api_keys == ()


def test_from_env_api_key_comma_list(env):
    env["MAXQ_API_KEY"] = " one, two ,,three,"
    assert Config.from_env(env).api_keys == ("one", "two", "three")


def test_from_env_overrides_win_over_environment(env, tmp_path):
    env.update({"MAXQ_PORT": "5000", "MAXQ_HOST": "0.0.0.0"})
    cfg = Config.from_env(env, port=0, sqlite_path=str(tmp_path / "o.db"))
    assert cfg.port == 0
    assert cfg.host == "0.0.0.0"
    assert cfg.sqlite_path == tmp_path / "o.db"
    assert isinstance(cfg.sqlite_path, Path)


def test_from_env_none_override_keeps_environment(env):
    env["MAXQ_MAX_CONCURRENT_STEPS"] = "7"
    cfg = Config.from_env(env, max_concurrent_steps=None, host=None)
    assert cfg.max_concurrent_steps == 7
    assert cfg.host == "127.0.0.1"


def test_from_env_flows_root_from_override_only(tmp_path):
    cfg = Config.from_env({}, flows_root=tmp_path)
    assert cfg.flows_root == tmp_path.resolve()


def test_from_env_missing_flows_root():
    with pytest.raises(ConfigError, match="MAXQ_FLOWS_ROOT"):
        Config.from_env({"MAXQ_PORT": "3000"})


@pytest.mark.parametrize("name", [
    "MAXQ_PORT",
    "MAXQ_SCHEDULER_INTERVAL_MS",
    "MAXQ_SCHEDULER_BATCH_SIZE",
    "MAXQ_MAX_CONCURRENT_STEPS",
    "MAXQ_ABORT_GRACE_MS",
    "MAXQ_MAX_LOG_CAPTURE",
])
def test_from_env_bad_integer_names_the_variable(env, name):
    env[name] = "ten"
    with pytest.raises(ConfigError, match=name) as info:
        Config.from_env(env)
    assert "ten" in str(info.value)


@pytest.mark.parametrize("name", [
    "MAXQ_SCHEDULER_INTERVAL_MS",
    "MAXQ_SCHEDULER_BATCH_SIZE",
    "MAXQ_MAX_CONCURRENT_STEPS",
    "MAXQ_MAX_LOG_CAPTURE",
])
def test_from_env_non_positive_integer(env, name):
    env[name] = "0"
    with pytest.raises(ConfigError, match=name):
        Config.from_env(env)


def test_from_env_negative_abort_grace(env):
    env["MAXQ_ABORT_GRACE_MS"] = "-1"
    with pytest.raises(ConfigError, match="MAXQ_ABORT_GRACE_MS"):
        Config.from_env(env)


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_from_env_port_out_of_range(env, port):
    env["MAXQ_PORT"] = port
    with pytest.raises(ConfigError, match="MAXQ_PORT"):
        Config.from_env(env)


@pytest.mark.parametrize("url", [
    "mysql://localhost/maxq", "localhost:5432", "sqlite:///x.db",
])
def test_from_env_bad_database_url(env, url):
    env["MAXQ_DATABASE_URL"] = url
    with pytest.raises(ConfigError, match="MAXQ_DATABASE_URL"):
        Config.from_env(env)


@pytest.mark.parametrize("url", [
    "postgresql://u:p@db:5432/maxq", "postgres://localhost/maxq",
])
def test_from_env_postgres_urls(env, url):
    env["MAXQ_DATABASE_URL"] = url
    assert Config.from_env(env).backend == "postgres"


def test_config_is_frozen(env):
    cfg = Config.from_env(env)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


def test_with_overrides_replaces_and_validates(env):
    cfg = Config.from_env(env)
    assert cfg.with_overrides(port=4000, host=None).port == 4000
    assert cfg.with_overrides(port=4000).host == "127.0.0.1"
    with pytest.raises(ConfigError):
        cfg.with_overrides(max_concurrent_steps=0)


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", "http://127.0.0.1:4321/api/v1"),
    ("0.0.0.0", "http://127.0.0.1:4321/api/v1"),
    ("::1", "http://[::1]:4321/api/v1"),
    ("maxq.local", "http://maxq.local:4321/api/v1"),
])
def test_api_base_derived_from_listening_port(env, host, expected):
    env["MAXQ_HOST"] = host
    assert Config.from_env(env).api_base(4321) == expected


def test_api_base_explicit_url_wins(env):
    env["MAXQ_API_URL"] = "http://proxy.example:80/api/v1/"
    assert Config.from_env(env).api_base(4321) == "http://proxy.example:80/api/v1"
