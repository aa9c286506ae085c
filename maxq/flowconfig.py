"""
A flow's C{flow.yaml}, read and checked (SPEC §1): what the server does
with a flow besides running it.  Reading never raises: a file that cannot
be read, is not a mapping, or has a bad value gives a L{FlowConfig} whose
C{error} says what is wrong (shown as C{configError}), and the part in
error is left at its default, so that part does nothing until fixed while
the flow can still be triggered by hand.

Each capability owns a I{section}: a function C{parse(raw) -> dict} that
reads its keys from the raw mapping and returns the typed values it needs
(stored under the section's name in L{FlowConfig.sections}), or raises
L{BadConfig} with a text naming the key.  Sections are listed in
L{SECTIONS}; one section's error does not stop the others.  Pure: no I/O
(the reading and its cache live in L{maxq.flows}).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Callable

# Keys shown as they are on GET /flows (JSON scalars only).
SHOWN_KEYS = ("title", "description", "schedule", "concurrency")


class BadConfig(ValueError):
    """
    A flow.yaml value a section cannot use; the text names the key.
    """


@dataclass(frozen=True)
class FlowConfig:
    """
    One flow.yaml as the server uses it.  C{raw} is the parsed mapping
    (empty when there is no file), C{sections} each section's values, and
    C{error} the text of every problem found, or None.
    """
    raw: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)
    error: str | None = None

    def section(self, name: str) -> dict:
        """
        The values of section C{name}: empty when it is in error or absent.
        """
        return self.sections.get(name, {})

    def shown(self) -> dict:
        """
        What C{GET /flows} shows of the file (with C{configError}).
        """
        out = {}
        for key in SHOWN_KEYS:
            value = _json_value(self.raw.get(key))
            if value is not None:
                out[key] = value
        if self.error is not None:
            out["configError"] = self.error
        return out


Section = Callable[[dict], dict]
# (name, parse): every capability that reads flow.yaml adds its section.
SECTIONS: list[tuple[str, Section]] = []


def parse(raw: Any, sections: list[tuple[str, Section]] | None = None) -> FlowConfig:
    """
    A L{FlowConfig} from what C{yaml.safe_load} gave (None for an empty
    file).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return FlowConfig(error="flow.yaml must be a mapping of keys to values")
    errors = []
    values = {}
    for name, section in (SECTIONS if sections is None else sections):
        try:
            values[name] = section(raw)
        except BadConfig as e:
            errors.append(str(e))
    return FlowConfig(raw=raw, sections=values, error="; ".join(errors) or None)


def unreadable(text: str) -> FlowConfig:
    """
    The config of a flow whose flow.yaml could not be read or parsed.
    """
    return FlowConfig(error=text)


def _json_value(value):
    """
    A flow.yaml value as JSON can carry it: strings, numbers, booleans and
    lists of them as they are, dates as ISO 8601 text, anything else dropped.
    """
    if isinstance(value, list):
        items = [_json_value(v) for v in value]
        return items if all(v is not None for v in items) else None
    if isinstance(value, bool) or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return None
