"""
The cost of GET /metrics during the throughput benchmark (issue 15): how long
a scrape takes while steps run (target: p95 <= 20 ms), and the throughput
with a scrape every second against the same trials without (target: within
5%).  Trials alternate (without, with, without, ...) so that drift of a
shared machine falls on both sides alike.

Called from benchmarks/run.py as ``measure_metrics(ctx, server, trial)``
where ``trial(server, runs)`` is its throughput trial; ``--only metrics``
runs it alone.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time

SCRAPE_EVERY_S = 1.0
# Latency is sampled more often than a real scraper would, in its own
# trials, so that a short benchmark still gets a p95 worth the name.
SAMPLE_EVERY_S = 0.05
TARGET_P95_MS = 20.0
TARGET_THROUGHPUT_LOSS = 0.05


class Scraper(threading.Thread):
    """
    GET /metrics every C{every_s} on its own keep-alive connection until
    stopped; records each scrape's wall time (ms) and body size.
    """

    def __init__(self, port: int, every_s: float, headers: dict | None = None):
        super().__init__(daemon=True)
        self.port = port
        self.every_s = every_s
        self.headers = headers or {}
        self.times_ms: list[float] = []
        self.sizes: list[int] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self._halt.is_set():
                t0 = time.perf_counter()
                try:
                    conn.request("GET", "/metrics", headers=self.headers)
                    response = conn.getresponse()
                    body = response.read()
                    if response.status != 200:
                        self.errors.append(f"HTTP {response.status}")
                except (OSError, http.client.HTTPException) as e:
                    self.errors.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    body = b""
                self.times_ms.append((time.perf_counter() - t0) * 1000)
                self.sizes.append(len(body))
                self._halt.wait(self.every_s)
        finally:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)


def _pct(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))],
                 2)


def _with_scraper(server, trial, runs_n: int, every_s: float, headers):
    scraper = Scraper(server.port, every_s, headers)
    scraper.start()
    try:
        wall, _trigger = trial(server, runs_n)
    finally:
        scraper.stop()
    return wall, scraper


def measure_metrics(ctx, server, trial) -> dict:
    runs_n, steps_n = ctx.counts["throughput_runs"], ctx.counts["throughput_steps"]
    total = runs_n * steps_n
    headers = getattr(server, "auth_headers", None) or {}
    without, with_scrape, samples, errors, sizes = [], [], [], [], []
    for _ in range(ctx.counts["repeats"]):
        wall, _ = trial(server, runs_n)
        without.append(total / wall)
        wall, scraper = _with_scraper(server, trial, runs_n, SCRAPE_EVERY_S, headers)
        with_scrape.append(total / wall)
        samples.extend(scraper.times_ms)
        errors.extend(scraper.errors)
        _wall, sampler = _with_scraper(server, trial, runs_n, SAMPLE_EVERY_S, headers)
        samples.extend(sampler.times_ms)
        errors.extend(sampler.errors)
        sizes.extend(sampler.sizes)
    base, scraped = statistics.median(without), statistics.median(with_scrape)
    p95 = _pct(samples, 95)
    loss = round(1 - scraped / base, 4) if base else None
    return {
        "scrapes": len(samples),
        "scrape_ms_p50": _pct(samples, 50),
        "scrape_ms_p95": p95,
        "scrape_ms_max": round(max(samples), 2) if samples else None,
        "scrape_bytes": max(sizes) if sizes else None,
        "scrape_errors": errors[:5],
        "steps_per_s_without": round(base, 1),
        "steps_per_s_scraped_every_1s": round(scraped, 1),
        "steps_per_s_without_all": [round(r, 1) for r in without],
        "steps_per_s_scraped_all": [round(r, 1) for r in with_scrape],
        "throughput_loss": loss,
        "target_p95_ms": TARGET_P95_MS,
        "target_throughput_loss": TARGET_THROUGHPUT_LOSS,
        "met": (p95 is not None and p95 <= TARGET_P95_MS
                and loss is not None and loss <= TARGET_THROUGHPUT_LOSS),
    }
