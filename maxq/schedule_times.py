"""
When a schedule fires (SPEC §5), computed without I/O: the C{schedule}
section of flow.yaml (L{parse}), fire times of cron expressions, aliases and
C{@every}, the catch-up decision after downtime (L{plan_catchup}) and the
fire times a backfill covers (L{backfill_times}).  Times are epoch
milliseconds.

Cron expressions are read by C{cronsim} (Debian semantics: day-of-month and
day-of-week are OR-ed when both are restricted) on naive local wall-clock
times; this module alone maps a wall time to an instant, the same way for
every expression: a wall time a DST change skips fires once, at the change;
a wall time that happens twice fires once, at its first occurrence.
C{@every D} ignores the time zone: it fires at every multiple of D since
the Unix epoch, so every server agrees.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from maxq import flowconfig
from maxq.flowconfig import BadConfig

SECTION = "schedule"
CATCHUPS = ("none", "latest", "all")
OVERLAPS = ("skip", "queue", "allow")
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@hourly": "0 * * * *",
}
DEFAULT_WINDOW_MS = 24 * 3600 * 1000
# Catch-up with "all" runs at most this many missed fire times.
MAX_CATCHUP = 1000
# A backfill covers at most this many fire times.
MAX_BACKFILL = 1000
# A fire time handled up to this late still counts as on time (a busy
# reactor, a lock held by another server); older ones were missed.
ON_TIME_GRACE_MS = 2000
MAX_EXPRESSIONS = 20
_UNITS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(?:\d+[smhd])+")
_EPOCH = datetime(1970, 1, 1)
_UTC = timezone.utc


def parse_duration(text: str) -> int:
    """
    C{"30s"}, C{"5m"}, C{"1h30m"}, C{"2d"} as milliseconds; ValueError
    otherwise.
    """
    if not isinstance(text, str) or not _DURATION.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h30m or 2d")
    return sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", text))


class Expression:
    """
    One compiled expression: fire times after or up to an instant.
    """

    text: str

    def after(self, ms: int) -> Iterator[int]:
        """
        Fire times strictly after C{ms}, ascending (endless).
        """
        raise NotImplementedError

    def upto(self, ms: int) -> Iterator[int]:
        """
        Fire times at or before C{ms}, descending (endless).
        """
        raise NotImplementedError

    def explain(self) -> str:
        raise NotImplementedError


class Every(Expression):
    def __init__(self, text: str, period_ms: int):
        self.text = text
        self.period = period_ms

    def after(self, ms):
        t = (ms // self.period + 1) * self.period
        while True:
            yield t
            t += self.period

    def upto(self, ms):
        t = (ms // self.period) * self.period
        while True:
            yield t
            t -= self.period

    def explain(self):
        return f"every {self.text.split(None, 1)[1]} (multiples since the Unix epoch)"


class Cron(Expression):
    def __init__(self, text: str, cron: str, tz: ZoneInfo | None):
        fields = cron.split()
        if len(fields) not in (5, 6):
            raise BadConfig(f"schedule: {text!r} must have 5 fields (6 with seconds first)")
        try:
            CronSim(cron, datetime(2000, 1, 1))
        except CronSimError as e:
            raise BadConfig(f"schedule: {text!r} is not a cron expression: {e}") from None
        try:
            self._explained = CronSim(cron, datetime(2000, 1, 1)).explain()
        except Exception:  # explain() may not word every valid expression
            self._explained = cron
        self.text = text
        self.cron = cron
        self.tz = tz

    def explain(self):
        return self._explained

    def _wall(self, ms: int) -> datetime:
        """
        The naive local wall time at C{ms}, to the second, and how far the
        clock will be set back after it (non-zero only in a repeated hour's
        second pass).
        """
        if self.tz is None:
            return _EPOCH + timedelta(seconds=ms // 1000)
        return datetime.fromtimestamp(ms // 1000, self.tz).replace(tzinfo=None)

    def _instant(self, wall: datetime) -> int:
        if self.tz is None:
            return int((wall - _EPOCH).total_seconds()) * 1000
        return local_instant(wall, self.tz)

    def after(self, ms):
        start = self._wall(ms)
        last = None
        for wall in _walls(CronSim(self.cron, start)):
            t = self._instant(wall)
            # A repeated hour's second pass maps to instants before ms, and
            # the wall times of a skipped hour to one instant.
            if t > ms and t != last:
                last = t
                yield t

    def upto(self, ms):
        start = self._wall(ms)
        if self.tz is not None:
            here = datetime.fromtimestamp(ms // 1000, self.tz)
            if here.fold:
                # In a repeated hour's second pass, first occurrences of
                # later wall times are already past: start after them.
                start += here.replace(fold=0).utcoffset() - here.utcoffset()
        last = None
        for wall in _walls(CronSim(self.cron, start + timedelta(seconds=1), reverse=True)):
            t = self._instant(wall)
            if t <= ms and t != last:
                last = t
                yield t


def _walls(cron: CronSim) -> Iterator[datetime]:
    """
    The wall times of C{cron}, ending where datetime's years end.
    """
    try:
        yield from cron
    except (ValueError, OverflowError):
        return


def local_instant(wall: datetime, tz: ZoneInfo) -> int:
    """
    The epoch ms of a naive local wall time: its first occurrence when the
    clock passes it twice, the moment of the change when it skips it.
    """
    first = wall.replace(tzinfo=tz, fold=0)
    seconds = int(first.timestamp())
    if datetime.fromtimestamp(seconds, tz).replace(tzinfo=None) == wall:
        # fold=0 is the first occurrence of an ambiguous time already.
        return seconds * 1000
    # Skipped: the change lies between the two readings of the wall time.
    lo, hi = int(wall.replace(tzinfo=tz, fold=1).timestamp()), seconds
    after = datetime.fromtimestamp(hi, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return hi * 1000


def compile_expression(text: str, tz: ZoneInfo | None) -> Expression:
    if not isinstance(text, str) or not text.strip():
        raise BadConfig("schedule: each expression must be a non-empty string")
    text = " ".join(text.split())
    if text.startswith("@every"):
        parts = text.split()
        if len(parts) != 2:
            raise BadConfig(f"schedule: {text!r} must be '@every D' (like 30s, 5m, 1h30m)")
        try:
            period = parse_duration(parts[1])
        except ValueError as e:
            raise BadConfig(f"schedule: {e}") from None
        if period < 1000:
            raise BadConfig(f"schedule: {text!r}: the period must be at least 1s")
        return Every(text, period)
    if text.startswith("@"):
        if text not in ALIASES:
            raise BadConfig(f"schedule: unknown alias {text!r} (use one of "
                            + ", ".join(ALIASES) + " or @every D)")
        cron = Cron(text, ALIASES[text], tz)
        return cron
    return Cron(text, text, tz)


@dataclass(frozen=True, eq=False)
class Schedule:
    """
    A flow's schedule as flow.yaml gives it.  Two are equal when flow.yaml
    says the same (C{key}), so a rescan can tell an edit.
    """

    expressions: tuple[Expression, ...]
    timezone: str
    catchup: str
    catchup_window_ms: int
    overlap: str
    input: Any
    paused: bool

    @property
    def key(self) -> tuple:
        return (tuple(e.text for e in self.expressions), self.timezone, self.catchup,
                self.catchup_window_ms, self.overlap, repr(self.input), self.paused)

    def __eq__(self, other):
        return isinstance(other, Schedule) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.expressions]

    def after(self, ms: int) -> Iterator[int]:
        """
        Every fire time after C{ms}, ascending, each once.
        """
        return _unique(heapq.merge(*(e.after(ms) for e in self.expressions)))

    def upto(self, ms: int) -> Iterator[int]:
        """
        Every fire time at or before C{ms}, descending, each once.
        """
        return _unique(heapq.merge(*(e.upto(ms) for e in self.expressions),
                                   reverse=True))

    def next_after(self, ms: int) -> int | None:
        return next(self.after(ms), None)

    def description(self) -> str:
        words = "; ".join(e.explain() for e in self.expressions)
        return words if self.timezone == "UTC" else f"{words} ({self.timezone})"


def _unique(times: Iterator[int]) -> Iterator[int]:
    last = None
    for t in times:
        if t != last:
            last = t
            yield t


def due_times(schedule: Schedule, after_ms: int, upto_ms: int,
              limit: int) -> tuple[list[int], bool]:
    """
    Fire times C{after_ms < t <= upto_ms}, oldest first: the newest
    C{limit} of them, and whether older ones were left out.
    """
    found = []
    for t in schedule.upto(upto_ms):
        if t <= after_ms:
            return found[::-1], False
        if len(found) == limit:
            return found[::-1], True
        found.append(t)
    return found[::-1], False


def plan_catchup(due: list[int], upto_ms: int, catchup: str, window_ms: int,
                 grace_ms: int = ON_TIME_GRACE_MS,
                 limit: int = MAX_CATCHUP) -> tuple[list[int], list[tuple[int, str]]]:
    """
    Which of the C{due} fire times (oldest first) to run now, and which to
    skip with a reason.  Those within C{grace_ms} of C{upto_ms} are on time
    and run.  Older ones were missed (the servers were down): C{none} runs
    none of them, C{latest} the most recent inside the window when no fire
    time is on time, C{all} each one inside the window (the newest
    C{limit}), oldest first.  Missed times before the window never run.
    """
    on_time = [t for t in due if upto_ms - t <= grace_ms]
    missed = [t for t in due if upto_ms - t > grace_ms]
    skipped = [(t, "outside_catchup_window") for t in missed if t < upto_ms - window_ms]
    inside = [t for t in missed if t >= upto_ms - window_ms]
    run: list[int] = []
    if catchup == "none":
        skipped += [(t, "catchup_none") for t in inside]
    elif catchup == "latest":
        keep = [] if on_time else inside[-1:]
        skipped += [(t, "catchup_latest") for t in inside if t not in keep]
        run += keep
    else:
        over = inside[:-limit] if len(inside) > limit else []
        skipped += [(t, "catchup_limit") for t in over]
        run += inside[len(over):]
    run += on_time
    skipped.sort()
    return run, skipped


def backfill_times(schedule: Schedule, from_ms: int, to_ms: int,
                   limit: int = MAX_BACKFILL) -> list[int] | None:
    """
    Fire times C{from_ms <= t <= to_ms}, oldest first; None when there
    are more than C{limit}.
    """
    found = []
    for t in schedule.after(from_ms - 1):
        if t > to_ms:
            return found
        if len(found) == limit:
            return None
        found.append(t)
    return found


def parse(raw: dict) -> dict:
    """
    The C{schedule} section: C{{"spec": Schedule}}, or empty when flow.yaml
    has no C{schedule}.
    """
    value = raw.get("schedule")
    if value is None:
        return {}
    texts = value if isinstance(value, list) else [value]
    if not texts or len(texts) > MAX_EXPRESSIONS:
        raise BadConfig(f"schedule: give 1 to {MAX_EXPRESSIONS} expressions")
    zone = raw.get("timezone", "UTC")
    if not isinstance(zone, str):
        raise BadConfig("timezone must be an IANA time zone name like Europe/Berlin")
    try:
        tz = None if zone == "UTC" else ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadConfig(f"timezone: unknown time zone {zone!r}") from None
    expressions = tuple(compile_expression(t, tz) for t in texts)
    catchup = raw.get("catchup", "latest")
    if catchup not in CATCHUPS:
        raise BadConfig("catchup must be one of " + ", ".join(CATCHUPS))
    window = raw.get("catchupWindow", "24h")
    try:
        window_ms = parse_duration(window)
    except ValueError as e:
        raise BadConfig(f"catchupWindow: {e}") from None
    overlap = raw.get("overlap", "skip")
    if overlap not in OVERLAPS:
        raise BadConfig("overlap must be one of " + ", ".join(OVERLAPS))
    paused = raw.get("paused", False)
    if not isinstance(paused, bool):
        raise BadConfig("paused must be true or false")
    return {"spec": Schedule(expressions, zone, catchup, window_ms, overlap,
                             raw.get("input"), paused)}


def schedule_of(config: flowconfig.FlowConfig) -> Schedule | None:
    """
    The flow's valid schedule, or None (none, or one in error).
    """
    return config.section(SECTION).get("spec")


def iso_utc(ms: int) -> str:
    """
    C{2026-12-03T06:00:00Z} (milliseconds only when there are some).
    """
    dt = datetime.fromtimestamp(ms / 1000, _UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"


flowconfig.SECTIONS.append((SECTION, parse))
