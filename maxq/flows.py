"""
Flows are directories under C{MAXQ_FLOWS_ROOT}: C{<flow>/flow.sh} and
C{<flow>/steps/<name>/step.sh}.  This module finds them and resolves
scripts, and is the only place that turns a name into a path: a name must
match the name rule, and the resolved file (after symlinks) must be a
regular, executable file inside the root.

Resolving a script walks every component of its path (C{realpath}, then
C{stat} and C{access}): about a third of a millisecond, paid for every
process started.  Scripts are therefore resolved at most once per
C{SCRIPT_CACHE_S} per path: a script added, removed or replaced is seen
within that time.  A script removed within it fails to start (exit 127).
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import yaml
from twisted.logger import Logger

from maxq import flowconfig
from maxq import schedule_times  # noqa: F401 (adds the flow.yaml "schedule" section)
from maxq.flowconfig import FlowConfig
from maxq.flowwatch import FlowsWatch
from maxq.model import valid_name

SCRIPT_CACHE_S = 1.0
# More distinct scripts than this in one cache period: start over.
_SCRIPT_CACHE_MAX = 10_000


class FlowsRoot:
    log = Logger()

    def __init__(self, root: Path, monotonic=time.monotonic,
                 cache_s: float = SCRIPT_CACHE_S):
        self.root = Path(root).resolve()
        self._root_text = str(self.root)
        self._monotonic = monotonic
        self._cache_s = cache_s
        # path text -> (resolved script or None, monotonic time it expires)
        self._scripts: dict[str, tuple[Path | None, float]] = {}
        # flow -> (stat key of its flow.yaml, FlowConfig)
        self._configs: dict[str, tuple[tuple, FlowConfig]] = {}
        # (stat key of the root, names of its entries that may be flows)
        self._names: tuple[tuple, list[str]] | None = None
        # What changed, told by the kernel (see watch()).
        self._watch = FlowsWatch(self._root_text)

    def _inside(self, path: Path) -> Path | None:
        """
        C{path} resolved through symlinks, if it stays inside the root.
        """
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if real != self.root and self.root not in real.parents:
            return None
        return real

    def _script(self, path: str) -> Path | None:
        key = str(path)
        now = self._monotonic()
        cached = self._scripts.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        if len(self._scripts) >= _SCRIPT_CACHE_MAX:
            self._scripts.clear()
        real = self._resolve_script(Path(path))
        self._scripts[key] = (real, now + self._cache_s)
        return real

    def _resolve_script(self, path: Path) -> Path | None:
        real = self._inside(path)
        if real is None:
            return None
        try:
            st = real.stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or not os.access(real, os.X_OK):
            return None
        return real

    def flow_dir(self, flow: str) -> Path | None:
        if not valid_name(flow):
            return None
        real = self._inside(self.root / flow)
        return real if real is not None and real.is_dir() else None

    def flow_script(self, flow: str) -> Path | None:
        """
        The executable C{flow.sh} of C{flow}, or None.
        """
        if not valid_name(flow):
            return None
        return self._script(os.path.join(self.root, flow, "flow.sh"))

    def step_script(self, flow: str, step: str) -> Path | None:
        """
        The executable C{step.sh} of step C{step} of C{flow}, or None.
        """
        if not (valid_name(flow) and valid_name(step)):
            return None
        return self._script(os.path.join(self.root, flow, "steps", step, "step.sh"))

    def step_names(self, flow: str) -> list[str]:
        steps_dir = self.root / flow / "steps"
        try:
            entries = sorted(os.listdir(steps_dir))
        except OSError:
            return []
        return [name for name in entries if self.step_script(flow, name) is not None]

    def describe(self, flow: str) -> dict | None:
        """
        The public description of one flow, or None when it does not exist.
        """
        script = self.flow_script(flow)
        if script is None:
            return None
        info = {
            "name": flow,
            "path": str(self.root / flow),
            "steps": self.step_names(flow),
        }
        info.update(self.config(flow).shown())
        return info

    def config(self, flow: str) -> FlowConfig:
        """
        The flow's C{flow.yaml}, read and checked (L{maxq.flowconfig}).
        Re-read only when the file's C{stat} changes, so asking on every
        request or timer costs one C{stat}.
        """
        # A string path: pathlib's joins cost more than the stat itself,
        # which the schedules' rescan pays for every flow every second.
        path = os.path.join(self._root_text, flow, "flow.yaml")
        try:
            st = os.stat(path)
        except OSError:
            self._configs.pop(flow, None)
            return FlowConfig()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._configs.get(flow)
        if cached is not None and cached[0] == key:
            return cached[1]
        config = self._read_config(Path(path))
        if len(self._configs) >= _SCRIPT_CACHE_MAX:
            self._configs.clear()
        self._configs[flow] = (key, config)
        return config

    def _read_config(self, path: Path) -> FlowConfig:
        if self._inside(path) is None:
            return flowconfig.unreadable("flow.yaml resolves outside the flows root")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            self.log.warn("unreadable {path}: {error}", path=str(path), error=e)
            return flowconfig.unreadable(f"flow.yaml cannot be read: {e}")
        config = flowconfig.parse(data)
        if config.error is not None:
            self.log.warn("{path}: {error}", path=str(path), error=config.error)
        return config

    def flow_names(self) -> list[str]:
        """
        The root's entries whose names may be flows' (not checked further),
        listed again only when the root directory's C{stat} changes: what a
        frequent rescan asks (one C{stat}).
        """
        try:
            st = os.stat(self.root)
        except OSError:
            return []
        key = (st.st_mtime_ns, st.st_ino)
        if self._names is None or self._names[0] != key:
            try:
                entries = sorted(os.listdir(self.root))
            except OSError:
                return []
            self._names = (key, [n for n in entries if valid_name(n)])
        return self._names[1]

    # ------------------------------------------------------------ changes

    def watch(self, reactor) -> bool:
        """
        Start watching the root for changes (L{maxq.flowwatch}); False when
        that cannot be done here, and L{changed_since} answers None.
        """
        if self._watch.active:
            return True
        return self._watch.start(reactor)

    def unwatch(self) -> None:
        self._watch.stop()

    def change_serial(self) -> int:
        """
        A serial to ask L{changed_since} with later.
        """
        return self._watch.serial

    def changed_since(self, serial: int | None) -> set[str] | None:
        """
        The names of the flows whose flow.yaml, flow.sh or directory may
        have changed after C{serial}, or None when any may have (nothing
        watches, or C{serial} is None): then look at every flow.
        """
        if serial is None:
            return None
        return self._watch.changed_since(serial)

    def list_flows(self) -> list[dict]:
        try:
            entries = sorted(os.listdir(self.root))
        except OSError:
            return []
        flows = []
        for name in entries:
            info = self.describe(name) if valid_name(name) else None
            if info is not None:
                flows.append(info)
        return flows


