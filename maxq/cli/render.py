"""
Output for people: tables, field lists, times and durations, and the API's
JSON as it came.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Sequence


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def format_time(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def format_duration(start: Any, end: Any = None, ms: Any = None) -> str:
    if not isinstance(ms, (int, float)):
        if not isinstance(start, (int, float)) or not isinstance(end, (int, float)):
            return "-"
        ms = end - start
    if ms < 1000:
        return f"{int(ms)}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, seconds = divmod(int(ms // 1000), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def format_wait(reason: Any) -> str:
    """
    A wait reason (SPEC §6) in a few words: "pool db (2 slots)".
    """
    if not isinstance(reason, dict):
        return ""
    details = " ".join(
        f"{k}={','.join(map(str, v)) if isinstance(v, list) else format_value(v)}"
        for k, v in reason.items() if k != "reason")
    return f"{reason.get('reason')} {details}".strip()


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """
    Left-aligned columns separated by two spaces, with an upper-case header.
    """
    cells = [[h.upper() for h in headers]]
    cells += [[format_value(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in cells]
    return "\n".join(lines)


def print_fields(pairs: Iterable[tuple[str, Any]]) -> None:
    pairs = list(pairs)
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        print(f"{key.ljust(width)}  {format_value(value)}")
