"""
What the templates show, worked out in Python: human durations, times as
C{<time>} values, status marks, the timeline of attempts, JSON for
people, masked env.  Pure functions of rows (no I/O, no Twisted).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from maxq import secrets

# Marks that say a status without colour (the legend repeats them).
STATUS_MARKS = {
    "pending": "\u25cb",    # white circle
    "running": "\u25b6",    # play
    "completed": "\u2713",  # check mark
    "failed": "\u2717",     # ballot x
    "cancelled": "\u2298",  # circled slash
    "paused": "\u2016",     # double vertical line (a pause sign)
}
RUN_ACTIVE = ("pending", "running", "paused")
TIMELINE_WIDTH = 720
TIMELINE_ROW = 16
TIMELINE_MAX_BARS = 300


def mark(status: str | None) -> str:
    return STATUS_MARKS.get(status or "", "?")


def iso_utc(ms: int | None) -> str:
    if ms is None:
        return ""
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def shown_utc(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def duration(ms: int | None) -> str:
    """
    C{1h 02m}, C{3m 05s}, C{4.2s}, C{350ms}: two units at most.
    """
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}h"


def elapsed(start: int | None, end: int | None, now: int) -> str:
    if start is None:
        return ""
    return duration((end if end is not None else now) - start)


def pretty_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def masked_env(env: dict | None) -> dict:
    return secrets.mask_env(env or {})


def allowed_actions(run: dict) -> set[str]:
    """
    The run actions its state allows (the others are not shown).
    """
    status = run["status"]
    actions = set()
    if status in ("pending", "running", "paused"):
        actions.add("abort")
    if status == "failed":
        actions.add("retry")
    if status in ("pending", "running"):
        actions.add("pause")
    if status == "paused":
        actions.add("resume")
    return actions


def can_retry_step(run: dict, step: dict) -> bool:
    """
    Whether to offer "retry step": a step that failed (or was cancelled) in
    a failed or paused run, but not one that failed only because a
    dependency did (retrying that dependency retries it too).
    """
    reason = (step.get("error") or {}).get("reason") if isinstance(
        step.get("error"), dict) else None
    return (step["status"] in ("failed", "cancelled")
            and run["status"] in ("failed", "paused") and reason != "dependency_failed")


def timeline(run: dict, steps: list[dict], now: int) -> dict:
    """
    One bar per started step (its latest attempt), from the run's start to
    now or its end; at most C{TIMELINE_MAX_BARS}, earliest first.
    """
    started = sorted((s for s in steps if s.get("started_at") is not None),
                     key=lambda s: (s["started_at"], s["id"]))
    origin = run.get("started_at") or (started[0]["started_at"] if started else now)
    end = run.get("completed_at") or now
    for s in started:
        end = max(end, s.get("completed_at") or now)
    span = max(end - origin, 1)
    scale = TIMELINE_WIDTH / span
    bars = []
    for i, s in enumerate(started[:TIMELINE_MAX_BARS]):
        stop = s.get("completed_at") or now
        x = (s["started_at"] - origin) * scale
        bars.append({
            "id": s["id"], "stage": s["stage"], "status": s["status"],
            "attempt": s["retry_count"] + 1 if s["status"] != "pending" else s["retry_count"],
            "x": round(x, 1), "y": i * TIMELINE_ROW,
            "width": round(max((stop - s["started_at"]) * scale, 2), 1),
            "duration": duration(stop - s["started_at"]),
        })
    return {"bars": bars, "width": TIMELINE_WIDTH, "height": max(len(bars), 1) * TIMELINE_ROW,
            "span": duration(span), "hidden": max(len(started) - TIMELINE_MAX_BARS, 0),
            "waiting": len(steps) - len(started)}


def stage_counts(steps: list[dict]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for s in steps:
        by = counts.setdefault(s["stage"], {})
        by[s["status"]] = by.get(s["status"], 0) + 1
    return counts


def page_links(total: int, limit: int, offset: int) -> dict:
    return {
        "total": total, "limit": limit, "offset": offset,
        "first": offset + 1 if total else 0, "last": min(offset + limit, total),
        "prev": max(offset - limit, 0) if offset > 0 else None,
        "next": offset + limit if offset + limit < total else None,
    }
