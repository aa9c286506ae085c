"""
Server configuration: one frozen L{Config} built from an environment mapping,
with command-line overrides on top.  Standard library only.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping


# Milliseconds, written in the environment as a duration: 7d, 12h, 30m, 45s.
DurationMs = int


def parse_duration_ms(name: str, raw: str) -> int:
    text = raw.strip().lower()
    for unit in ("ms", "s", "m", "h", "d"):
        number = text[:-len(unit)]
        if text.endswith(unit) and number.strip().isdigit():
            return int(number) * _DURATION[unit]
    if text.isdigit():
        return int(text) * 1000
    raise ConfigError(f"{name} must be a duration such as 7d, 12h, 30m or 45s, "
                      f"not {raw!r}")


class ConfigError(ValueError):
    """
    A setting is missing or malformed; the message names the variable.
    """


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Config:
    flows_root: Path
    sqlite_path: Path = Path("./data/maxq.db")
    database_url: str | None = None
    port: int = 3000
    host: str = "127.0.0.1"
    scheduler_interval_ms: int = 200
    scheduler_batch_size: int = 10
    max_concurrent_steps: int = 10
    abort_grace_ms: int = 5000
    max_log_capture: int = 65536
    api_keys: tuple[str, ...] = ()
    api_url: str | None = None
    worker_id: str = field(default_factory=_default_worker_id)
    max_body_bytes: int = 10 * 1024 * 1024
    max_steps_per_stage: int = 10000
    # Edges (dependsOn entries, all steps together) one stage may declare:
    # they are checked and written while the request holds the reactor,
    # 100,000 of them in about half a second.
    max_dependencies_per_stage: int = 100000
    # How long a step's pipes may stay open after its main process exited
    # (a backgrounded child holding stdout) before the group is killed.
    output_drain_ms: int = 2000
    shutdown_grace_ms: int = 10000
    # Several servers on one PostgreSQL database: how often each proves it
    # is alive, and after how long without a heartbeat its work is taken back.
    worker_heartbeat_ms: int = 2000
    worker_timeout_ms: int = 15000
    # SPEC §7: how long events are kept (MAXQ_EVENT_RETENTION: 7d, 12h, 30m,
    # 45s), and the bytes stored per stream of each attempt.
    event_retention_ms: DurationMs = 7 * 86_400_000
    max_output_bytes: int = 16 * 1024 * 1024

    @property
    def backend(self) -> str:
        return "postgres" if self.database_url else "sqlite"

    def api_base(self, listening_port: int) -> str:
        """
        The C{MAXQ_API} URL handed to scripts: C{MAXQ_API_URL} when set, else
        derived from where the server actually listens.
        """
        if self.api_url:
            return self.api_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{listening_port}/api/v1"

    def with_overrides(self, **overrides) -> "Config":
        """
        Return a copy with the given non-None values replaced (used for
        command-line options, which win over the environment).
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        cfg = replace(self, **given)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        positive = (
            "scheduler_interval_ms",
            "scheduler_batch_size",
            "max_concurrent_steps",
            "max_log_capture",
            "max_body_bytes",
            "max_steps_per_stage",
            "max_dependencies_per_stage",
            "worker_heartbeat_ms",
            "worker_timeout_ms",
            "event_retention_ms",
            "max_output_bytes",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_env_name(name)} must be a positive integer")
        for name in ("abort_grace_ms", "output_drain_ms", "shutdown_grace_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_env_name(name)} must be zero or more")
        if not 0 <= self.port <= 65535:
            raise ConfigError("MAXQ_PORT must be between 0 and 65535")
        if self.database_url and not self.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ConfigError("MAXQ_DATABASE_URL must be a postgresql:// URL")

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides
    ) -> "Config":
        """
        Read every C{MAXQ_*} setting from C{env} (default C{os.environ}),
        then apply C{overrides} (keyword names are the field names).
        """
        if env is None:
            env = os.environ
        values: dict = {}
        for f in fields(cls):
            if f.name == "api_keys":
                raw = env.get("MAXQ_API_KEY", "")
                keys = tuple(k.strip() for k in raw.split(",") if k.strip())
                values["api_keys"] = keys
                continue
            name = _env_name(f.name)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "flows_root" not in values:
            raise ConfigError("MAXQ_FLOWS_ROOT is required (the flows directory)")
        values["flows_root"] = Path(values["flows_root"]).resolve()
        if "sqlite_path" in values:
            values["sqlite_path"] = Path(values["sqlite_path"])
        cfg = cls(**values)
        cfg.validate()
        return cfg


_ENV_NAMES = {"api_keys": "MAXQ_API_KEY", "event_retention_ms": "MAXQ_EVENT_RETENTION"}
_DURATION = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def _env_name(field_name: str) -> str:
    return _ENV_NAMES.get(field_name, "MAXQ_" + field_name.upper())


def _parse(name: str, annotation: str, raw: str):
    if annotation == "DurationMs":
        return parse_duration_ms(name, raw)
    if annotation == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if annotation == "Path":
        return Path(raw)
    return raw
