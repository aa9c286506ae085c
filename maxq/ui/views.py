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


def attempts_from_events(rows: list[dict]) -> dict[str, list[dict]]:
    """
    Each step's attempts from its status changes (event rows in id order,
    SPEC §7): an attempt starts when the step becomes running and ends at
    its next change; one that went back to pending failed (with a retry
    left) or was interrupted.
    """
    out: dict[str, list[dict]] = {}
    for row in rows:
        step_id, status = row.get("step_id"), row.get("status")
        if step_id is None or status is None:
            continue
        data = row.get("data") or {}
        tries = out.setdefault(step_id, [])
        open_try = tries[-1] if tries and tries[-1]["end"] is None else None
        if open_try is not None and status != "running":
            open_try["end"] = row["at"]
            if status == "pending":
                status = "failed" if data.get("exitCode") or data.get("error") else "cancelled"
            open_try["status"] = status
        if row.get("status") == "running":
            if open_try is not None:
                open_try["end"], open_try["status"] = row["at"], "cancelled"
            tries.append({"attempt": data.get("attempt") or len(tries) + 1,
                          "start": row["at"], "end": None, "status": "running"})
    return out


def timeline(run: dict, steps: list[dict], now: int,
             attempts: dict[str, list[dict]] | None = None) -> dict:
    """
    A row per started step, earliest first (at most C{TIMELINE_MAX_BARS}),
    with a bar per attempt when C{attempts} (L{attempts_from_events}) has
    the step's, else one for its latest; from the run's start to now or
    its end.
    """
    started = sorted((s for s in steps if s.get("started_at") is not None),
                     key=lambda s: (s["started_at"], s["id"]))
    tries = {}
    for s in started[:TIMELINE_MAX_BARS]:
        known = (attempts or {}).get(s["id"])
        tries[s["id"]] = known or [{
            "attempt": s["retry_count"] + 1, "start": s["started_at"],
            "end": s.get("completed_at"),
            "status": s["status"] if s.get("completed_at") is not None else "running"}]
    first = min((t["start"] for ts in tries.values() for t in ts), default=now)
    origin = first if run.get("started_at") is None else min(run["started_at"], first)
    end = run.get("completed_at") or now
    for ts in tries.values():
        for t in ts:
            end = max(end, t["end"] or now)
    span = max(end - origin, 1)
    scale = TIMELINE_WIDTH / span
    rows = []
    for i, s in enumerate(started[:TIMELINE_MAX_BARS]):
        bars = []
        for t in tries[s["id"]]:
            stop = t["end"] or now
            bars.append({
                "attempt": t["attempt"], "status": t["status"],
                "x": round((t["start"] - origin) * scale, 1),
                "width": round(max((stop - t["start"]) * scale, 2), 1),
                "duration": duration(stop - t["start"]),
            })
        rows.append({"id": s["id"], "stage": s["stage"], "status": s["status"],
                     "y": i * TIMELINE_ROW, "bars": bars})
    return {"rows": rows, "width": TIMELINE_WIDTH,
            "height": max(len(rows), 1) * TIMELINE_ROW, "span": duration(span),
            "hidden": max(len(started) - TIMELINE_MAX_BARS, 0),
            "waiting": len(steps) - len(started),
            "attempts": sum(len(r["bars"]) for r in rows)}


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
