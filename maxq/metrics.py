"""
The server's Prometheus metrics (SPEC §8): one private registry per server
with every metric object, and the cheap ways the rest of MaxQ counts.

Counting happens in memory after a commit, from what the engine already
knows (L{Metrics.count} takes the tallies a unit of work left in its
effects): no database work on the step path.  Labelled children are cached
per label values, so an event costs a dict lookup and an add.  The
C{maxq_cluster_*} gauges are figures of the whole database, set by a timed
query (L{maxq.operations.ClusterFigures}), never per scrape.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from maxq import __version__

# A scrape renders on the reactor thread at about 30 us a line here: no
# `_created` series (a line per labelled child, which no query of ours
# needs) and few buckets keep it to a few milliseconds.
prometheus_client.disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: steps from milliseconds to an hour, runs up to a day.
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 3600, float("inf"))
RUN_BUCKETS = (1, 10, 60, 300, 900, 1800, 3600, 21600, 86400, float("inf"))
HTTP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 2.5, float("inf"))

# Tally kinds a unit of work records in its effects (see L{Metrics.count}).
RUN_STARTED = "run_started"
RUN_FINISHED = "run_finished"
STEP_STARTED = "step_started"
STEP_FINISHED = "step_finished"
# A schedule's fire time: C{status} is the outcome (fired, queued, skipped).
SCHEDULE_FIRED = "schedule_fired"


class _Children(dict):
    """
    A metric's labelled children by label values: C{labels()} once per
    distinct value, then a plain dict lookup.
    """

    def __init__(self, metric):
        super().__init__()
        self.metric = metric

    def __missing__(self, key):
        child = self[key] = self.metric.labels(*key) if isinstance(key, tuple) \
            else self.metric.labels(key)
        return child


class Metrics:
    """
    Every metric of one server in its own L{CollectorRegistry} (several
    servers may share a process in tests; the global registry is never
    touched).
    """

    def __init__(self, version: str = __version__):
        self.registry = registry = CollectorRegistry(auto_describe=False)
        # Each series' name and labels as exposition text (see exposition).
        self._series: dict = {}
        ProcessCollector(registry=registry)

        def counter(name, text, labels=()):
            return Counter(name, text, labels, registry=registry)

        def histogram(name, text, labels, buckets):
            return Histogram(name, text, labels, registry=registry, buckets=buckets)

        def gauge(name, text, labels=()):
            return Gauge(name, text, labels, registry=registry)

        self.runs_started = counter("maxq_runs_started_total", "Runs started", ["flow"])
        self.runs_finished = counter("maxq_runs_finished_total", "Runs finished",
                                     ["flow", "status"])
        self.run_duration = histogram("maxq_run_duration_seconds",
                                      "Runs from start to end", ["flow"], RUN_BUCKETS)
        self.steps_started = counter("maxq_steps_started_total", "Step attempts started",
                                     ["flow"])
        self.steps_finished = counter("maxq_steps_finished_total",
                                      "Step attempts finished", ["flow", "status"])
        self.step_duration = histogram("maxq_step_duration_seconds",
                                       "Step attempts from start to end", ["flow"],
                                       STEP_BUCKETS)
        self.step_queue_wait = histogram("maxq_step_queue_wait_seconds",
                                         "Steps from queued to started", ["flow"],
                                         STEP_BUCKETS)
        self.steps_running = gauge("maxq_steps_running",
                                   "Step processes running on this server")
        self.step_slots = gauge("maxq_step_slots",
                                "Steps this server may run at once (MAXQ_MAX_CONCURRENT_STEPS)")
        self.schedule_fires = counter("maxq_schedule_fires_total",
                                      "Schedule fires by outcome", ["flow", "outcome"])
        # Not in SPEC §8's list: what an SLA alert needs (once per run).
        self.sla_missed = counter("maxq_sla_missed_total",
                                  "Runs found unfinished past their flow's sla", ["flow"])
        self.notifications = counter("maxq_notifications_total",
                                     "Notification delivery attempts by outcome",
                                     ["outcome"])
        self.http_requests = counter("maxq_http_requests_total", "HTTP requests",
                                     ["method", "route", "code"])
        self.http_duration = histogram("maxq_http_request_duration_seconds",
                                       "HTTP request handling time", ["route"],
                                       HTTP_BUCKETS)
        self.event_stream_clients = gauge("maxq_event_stream_clients",
                                          "Clients connected to the event stream")
        self.build_info = gauge("maxq_build_info", "The MaxQ version", ["version"])
        self.build_info.labels(version).set(1)
        self.cluster_runs = gauge("maxq_cluster_runs", "Runs in the database by status",
                                  ["status"])
        self.cluster_steps = gauge("maxq_cluster_steps",
                                   "Steps in the database by status", ["status"])
        self.cluster_oldest_pending = gauge(
            "maxq_cluster_oldest_pending_step_age_seconds",
            "Age of the oldest runnable pending step in the database")
        self.cluster_servers = gauge("maxq_cluster_servers",
                                     "Live servers sharing the database")
        self._children = {name: _Children(getattr(self, name)) for name in (
            "runs_started", "runs_finished", "run_duration", "steps_started",
            "steps_finished", "step_duration", "step_queue_wait", "schedule_fires", "sla_missed",
            "notifications", "http_requests", "http_duration", "cluster_runs",
            "cluster_steps")}
        c = self._children
        self._counting = {
            RUN_STARTED: lambda flow, _s, _v: c["runs_started"][flow].inc(),
            RUN_FINISHED: self._run_finished,
            STEP_STARTED: self._step_started,
            STEP_FINISHED: self._step_finished,
            SCHEDULE_FIRED: lambda flow, outcome, _v: self.schedule_fired(flow, outcome),
        }

    # -------------------------------------------------------------- counting

    def count(self, tallies) -> None:
        """
        Count what a committed unit of work recorded: C{(kind, flow, status,
        seconds)} tuples (see the kinds above).
        """
        counting = self._counting
        for kind, flow, status, seconds in tallies:
            counting[kind](flow, status, seconds)

    def _run_finished(self, flow, status, seconds):
        self._children["runs_finished"][(flow, status)].inc()
        if seconds is not None:
            self._children["run_duration"][flow].observe(seconds)

    def _step_started(self, flow, _status, wait_s):
        self._children["steps_started"][flow].inc()
        if wait_s is not None:
            self._children["step_queue_wait"][flow].observe(wait_s)

    def _step_finished(self, flow, status, seconds):
        self._children["steps_finished"][(flow, status)].inc()
        if seconds is not None:
            self._children["step_duration"][flow].observe(seconds)

    def schedule_fired(self, flow: str, outcome: str) -> None:
        """
        One fire of C{flow}'s schedule (C{outcome}: e.g. C{started},
        C{skipped}, C{failed}); for the scheduler of schedules.
        """
        self._children["schedule_fires"][(flow, outcome)].inc()

    def sla_was_missed(self, flow: str) -> None:
        self._children["sla_missed"][flow].inc()

    def notification_attempted(self, outcome: str) -> None:
        self._children["notifications"][outcome].inc()

    def http_request(self, method: str, route: str, code: int, seconds: float) -> None:
        self._children["http_requests"][(method, route, str(code))].inc()
        self._children["http_duration"][route].observe(seconds)

    def set_cluster(self, runs: dict, steps: dict, oldest_pending_s: float,
                    servers: int, statuses_runs, statuses_steps) -> None:
        """
        The whole database's figures, from the timed query.  Every status is
        set (0 when none), so a series does not vanish when it empties.
        """
        for status in statuses_runs:
            self._children["cluster_runs"][status].set(runs.get(status, 0))
        for status in statuses_steps:
            self._children["cluster_steps"][status].set(steps.get(status, 0))
        self.cluster_oldest_pending.set(oldest_pending_s)
        self.cluster_servers.set(servers)

    # ------------------------------------------------------------ rendering

    def render(self) -> bytes:
        """
        The text exposition format, rendered here and now on the reactor
        thread: the same text as C{generate_latest} gives.  MaxQ's own
        metrics are read straight from their children (L{_fast_family}),
        not through C{registry.collect()}, which builds an object for each
        sample and costs most of a scrape; other collectors (the process
        one) go the usual way.
        """
        try:
            return self._render_fast()
        except AttributeError:
            # A prometheus_client whose metrics keep their values otherwise.
            return exposition(self.registry, self._series)

    def _render_fast(self) -> bytes:
        out: list[str] = []
        for collector in list(self.registry._collector_to_names):
            if isinstance(collector, (Counter, Gauge, Histogram)):
                _fast_family(collector, self._series, out)
            else:
                _collector_text(collector.collect(), self._series, out)
        return "".join(out).encode()


def _fast_family(metric, cache: dict, out: list) -> None:
    """
    The lines of one Counter, Gauge or Histogram, from its children's
    values; each series' name and labels are made into text once.
    """
    kind = metric._type
    name = metric._name
    shown = name + "_total" if kind == "counter" else name
    out.append(f"# HELP {shown} {_escape(metric._documentation)}\n# TYPE {shown} {kind}\n")
    if metric._is_parent():
        children = list(metric._metrics.items())
    else:
        children = [((), metric)]
    labelnames = metric._labelnames
    for values, child in children:
        key = (metric, values)
        prefixes = cache.get(key)
        if prefixes is None:
            prefixes = cache[key] = _prefixes(kind, name, labelnames, values,
                                              getattr(child, "_upper_bounds", ()))
        if kind == "histogram":
            acc = 0.0
            for prefix, bucket in zip(prefixes, child._buckets):
                acc += bucket.get()
                out.append(prefix + _number(acc) + "\n")
            out.append(prefixes[-2] + _number(acc) + "\n")
            out.append(prefixes[-1] + _number(child._sum.get()) + "\n")
        else:
            out.append(prefixes[0] + _number(child._value.get()) + "\n")


def _prefixes(kind: str, name: str, labelnames, values, bounds) -> list[str]:
    labels = list(zip(labelnames, values))

    def prefix(sample: str, extra=()) -> str:
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels + list(extra)))
        return f"{sample}{{{text}}} " if text else f"{sample} "

    if kind == "counter":
        return [prefix(name + "_total")]
    if kind == "histogram":
        return ([prefix(name + "_bucket", [("le", floatToGoString(b))]) for b in bounds]
                + [prefix(name + "_count"), prefix(name + "_sum")])
    return [prefix(name)]


def _number(value) -> str:
    value = float(value)
    if value == _INF:
        return "+Inf"
    if value == -_INF:
        return "-Inf"
    if value != value:
        return "NaN"
    if value.is_integer() and abs(value) < 1e15:
        return f"{int(value)}.0"
    return repr(value)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_INF = float("inf")


def exposition(registry, series: dict | None = None) -> bytes:
    """
    The Prometheus text format (0.0.4) of C{registry}; C{series} caches
    each sample's name and labels as text, across calls.
    """
    out: list[str] = []
    _collector_text(registry.collect(), {} if series is None else series, out)
    return "".join(out).encode()


def _collector_text(families, cache: dict, out: list) -> None:
    for metric in families:
        name, kind = metric.name, metric.type
        shown = name + "_total" if kind == "counter" else name
        out.append(f"# HELP {shown} {_escape(metric.documentation)}\n"
                   f"# TYPE {shown} {kind if kind in _TYPES else 'untyped'}\n")
        for sample in metric.samples:
            labels = sample.labels
            key = (sample.name, tuple(labels.items()))
            prefix = cache.get(key)
            if prefix is None:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                prefix = cache[key] = (f"{sample.name}{{{text}}} " if text
                                       else f"{sample.name} ")
            out.append(prefix + _number(sample.value) + "\n")


_TYPES = ("counter", "gauge", "histogram", "summary")


def tally(kind: str, flow: str, status: str | None = None,
          start_ms: int | None = None, end_ms: int | None = None) -> tuple:
    """
    One tally for L{Metrics.count}; C{start_ms}/C{end_ms} give the seconds
    observed (none when either is unknown).
    """
    seconds = None
    if start_ms is not None and end_ms is not None:
        seconds = max(0, end_ms - start_ms) / 1000.0
    return (kind, flow, status, seconds)
