"""
The "events" measure of benchmarks/run.py (issue 14): the throughput
workload with N Server-Sent Events clients connected to ``GET /events``,
against the same workload with none.

- every client must receive every event of the workload, once, in order
  (checked against ``GET /events`` JSON pages after the workload);
- throughput with the clients / throughput without (target >= 0.85);
- event lag: the frame's arrival at the client minus the event's ``at``
  (stamped by the server just before its commit), median and p95 over
  every client and event (target p95 <= 50 ms on SQLite).

The clients are raw sockets read by one thread through a selector, so the
benchmark's own cost per client stays small.
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import statistics
import threading
import time

# The head of an event frame as maxq.api.sse writes it: its id, and the
# event's "at" (the data's third member, after "id" and "type").
_FRAME = re.compile(rb'id: (\d+)\nevent: [^\n]*\ndata: \{"id":\d+,"type":"[^"]*","at":(\d+)')


class _Client:
    def __init__(self, port: int, after: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall((
            "GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Accept: text/event-stream\r\nLast-Event-ID: {after}\r\n\r\n").encode())
        self.sock.setblocking(False)
        self.raw = b""
        self.body = b""
        self.headers_done = False
        self.count = 0
        self.arrivals: list[tuple[float, list]] = []

    def feed(self, data: bytes, now_ms: float) -> None:
        self.raw += data
        if not self.headers_done:
            head, sep, rest = self.raw.partition(b"\r\n\r\n")
            if not sep:
                return
            self.headers_done = True
            self.raw = rest
        while True:
            size_line, sep, rest = self.raw.partition(b"\r\n")
            if not sep:
                break
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                break
            self.body += rest[:size]
            self.raw = rest[size + 2:]
        # Only the id and the time are read from each frame (not the whole
        # JSON), by one regular expression over what arrived: the clients
        # share the CPUs with the server they measure.
        cut = self.body.rfind(b"\n\n")
        if cut < 0:
            return
        done, self.body = self.body[:cut + 2], self.body[cut + 2:]
        heads = _FRAME.findall(done)
        self.count += len(heads)
        # Turned into numbers after the workload (see ids and lags_ms).
        self.arrivals.append((now_ms, heads))

    @property
    def ids(self) -> list[int]:
        return [int(event_id) for _, heads in self.arrivals for event_id, _ in heads]

    @property
    def lags_ms(self) -> list[float]:
        return [now_ms - int(at) for now_ms, heads in self.arrivals for _, at in heads]


class _Readers:
    def __init__(self, clients: list[_Client]):
        self.clients = clients
        self.selector = selectors.DefaultSelector()
        for client in clients:
            self.selector.register(client.sock, selectors.EVENT_READ, client)
        self.stop = False
        self.cpu_s = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self._read()
        finally:
            self.cpu_s = time.thread_time()

    def _read(self):
        while not self.stop:
            for key, _ in self.selector.select(timeout=0.1):
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                if data:
                    key.data.feed(data, time.time() * 1000)

    def close(self):
        self.stop = True
        self.thread.join(5)
        for client in self.clients:
            self.selector.unregister(client.sock)
            client.sock.close()


def _cpu_s(pid: int, which=(11, 12)) -> float:
    """
    CPU seconds of process C{pid} so far: user + system, or only the
    fields of /proc/PID/stat given (after the name; 11 user, 12 system).
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in which) / os.sysconf("SC_CLK_TCK")


def _pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))], 2)


def _all_ids_after(client_api, after: int) -> list[int]:
    ids = []
    while True:
        page = client_api.call("GET", f"/api/v1/events?after={after}&limit=1000")
        ids.extend(e["id"] for e in page["events"])
        if not page["events"]:
            return ids
        after = page["lastId"]


def measure_events(ctx, server, throughput_trial, profiler=None) -> dict:
    """
    C{throughput_trial(server, runs)} is benchmarks/run.py's workload:
    returns C{(wall seconds, trigger seconds)}; C{profiler(label)}, when
    given, is run.py's py-spy recorder (C{--profile}) around the first
    workload with the clients.
    """
    runs_n = ctx.counts.get("events_runs", ctx.counts["throughput_runs"])
    steps_n = ctx.counts["throughput_steps"]
    clients_n = ctx.counts.get("events_clients", 100)
    total = runs_n * steps_n
    api = server.client
    without = []
    with_clients = []
    checks = []
    lags: list[float] = []
    reader_cpu = []
    # How many pieces each client read the workload's events in.
    reads = []
    server_cpu = {"without": [], "without_system": [], "with": [], "with_system": []}
    for _ in range(ctx.counts["repeats"]):
        cpu0, sys0 = _cpu_s(server.pid), _cpu_s(server.pid, (12,))
        wall, _ = throughput_trial(server, runs_n)
        server_cpu["without"].append(_cpu_s(server.pid) - cpu0)
        server_cpu["without_system"].append(_cpu_s(server.pid, (12,)) - sys0)
        without.append(total / wall)
        last = _last_id(api)
        clients = [_Client(server.port, last) for _ in range(clients_n)]
        readers = _Readers(clients)
        try:
            _wait(lambda: all(c.headers_done for c in clients), 30, "SSE headers")
            cpu0, sys0 = _cpu_s(server.pid), _cpu_s(server.pid, (12,))
            if profiler is not None and not with_clients:
                with profiler("events_clients"):
                    wall, _ = throughput_trial(server, runs_n)
            else:
                wall, _ = throughput_trial(server, runs_n)
            server_cpu["with"].append(_cpu_s(server.pid) - cpu0)
            server_cpu["with_system"].append(_cpu_s(server.pid, (12,)) - sys0)
            with_clients.append(total / wall)
            expected = _all_ids_after(api, last)
            _wait(lambda: all(c.count >= len(expected) for c in clients), 60,
                  "every client to receive every event")
        finally:
            readers.close()
        reader_cpu.append(readers.cpu_s)
        reads.append(statistics.median(len(c.arrivals) for c in clients))
        checks.append(all(c.ids == expected for c in clients))
        for c in clients:
            lags.extend(c.lags_ms)
    rate0 = statistics.median(without)
    rate1 = statistics.median(with_clients)
    return {
        "clients": clients_n, "steps": total,
        "steps_per_s_without_clients": round(rate0, 1),
        "steps_per_s_with_clients": round(rate1, 1),
        "throughput_ratio": round(rate1 / rate0, 3) if rate0 else None,
        "every_event_once_in_order": all(checks),
        "events_per_client": len(expected),
        # The benchmark's own reading of the streams, which shares the CPUs.
        "reader_cpu_s": [round(x, 2) for x in reader_cpu],
        "reads_per_client": reads,
        "server_cpu_s": {k: [round(x, 2) for x in v] for k, v in server_cpu.items()},
        "lag_ms": {"n": len(lags), "p50": _pct(lags, 50), "p95": _pct(lags, 95),
                   "max": _pct(lags, 100)},
    }


def _last_id(api) -> int:
    after = 0
    while True:
        page = api.call("GET", f"/api/v1/events?after={after}&limit=1000")
        if not page["events"]:
            return after
        after = page["lastId"]


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def evaluate_events(res: dict, pg: bool, row) -> None:
    """
    The targets of issue 14, as rows of benchmarks/run.py's table.
    """
    ev = res.get("events")
    if not isinstance(ev, dict) or "error" in ev:
        return
    ratio = ev.get("throughput_ratio")
    row("events throughput with clients", "x no clients", ratio, None, ">= 0.85",
        ratio >= 0.85 if ratio is not None else None)
    row("events every event once, in order", "bool", ev["every_event_once_in_order"],
        None, "true", bool(ev["every_event_once_in_order"]))
    p95 = ev["lag_ms"]["p95"]
    row("events lag p95", "ms", p95, None, "<= 50" if not pg else "(info)",
        (p95 <= 50) if (p95 is not None and not pg) else None, binding=not pg)
