"""
The "scale" measure of benchmarks/run.py (issue 17): reads and the claim
with 1,000,000 runs in the database, and event pruning at that size.

A server migrates a fresh database and stops; the rows then go in with
bulk SQL from a number series (SQLite: a recursive CTE, PostgreSQL:
generate_series), one INSERT ... SELECT per table in one transaction,
every column of the migrated schema filled as the server would (JSON text,
epoch milliseconds, ids in commit order).  Each run has one final stage,
two steps (``b`` depends on ``a``), one flow call, a dependency edge and
seven events; runs are spread over 30 days, ~8% failed, the newest few
running (their step ``b`` waits out a retry delay, so the server has
nothing to claim).  Five flows with shares 50/25/15/9/1 %.

The server is started again (events kept 60 days, so its pruner stays
quiet) and measured over HTTP, p50/p95 of each:

- ``GET /runs`` with every filter (none, a common and a rare flow, each
  status that occurs, flow and status together) and every sort
  (createdAt/startedAt/completedAt, desc and asc);
- ``GET /runs/{id}`` of random runs;
- ``GET /events?after=`` at random cursors, and a few filtered variants.

With the server stopped: the plain step claim and the flow-call claim,
the statements the backends run (imported from maxq), each timed in a
transaction rolled back afterwards, with 10 runnable steps present; the
same on a database with 1,000 runs, so the ratio shows whether the claim
grows with finished runs.  Then event pruning: the retention's batches
(``prune_events``, 500 events each, one transaction per batch) over the
oldest events, each batch's duration (how long it holds its locks) and
the rate.

``BENCH_SCALE_RUNS`` overrides the count (iterate at 100,000, report at
1,000,000).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import statistics
import time
from pathlib import Path

FULL = {"scale_runs": 1_000_000, "scale_requests": 60, "scale_claims": 200,
        "scale_prune_batches": 60}
QUICK = {"scale_runs": 5_000, "scale_requests": 8, "scale_claims": 20,
         "scale_prune_batches": 5}

FLOWS = (("ingest", 50), ("report", 25), ("train", 15), ("export", 9), ("audit", 1))
EVENTS_PER_RUN = 7
SPAN_MS = 30 * 86_400_000
# The newest runs are still running: one in 5,000, at least 20.
RUNNING_SHARE = 5000
FAILED_PCT = 8
SMALL_RUNS = 1000
LOADED = ("runs", "stages", "flow_calls", "step_deps", "steps", "events")


def running_count(n: int) -> int:
    return min(n, max(20, n // RUNNING_SHARE))


def h32(i: int) -> int:
    return (i * 2654435761) % 4294967296


def run_id(i: int) -> str:
    """
    Run i's id, as the loader's SQL spells it: UUID-shaped, the first part
    scattered (ids are random in real use).
    """
    return "%08x-0000-4000-8000-%012x" % (h32(i), i)


class Dialect:
    """
    What differs between the backends' bulk SQL.
    """

    def __init__(self, backend: str):
        self.backend = backend

    def series(self, count: int, name: str = "i") -> tuple[str, str]:
        """
        C{(WITH prefix, FROM item)} of the numbers 0 .. count-1 as C{name}.
        """
        if self.backend == "sqlite":
            return (f"WITH RECURSIVE g({name}) AS (SELECT 0 UNION ALL SELECT {name} + 1 "
                    f"FROM g WHERE {name} < {count - 1}) ", "g")
        return "", f"generate_series(0::bigint, {count - 1}) AS g({name})"

    def run_id(self, i: str) -> str:
        if self.backend == "sqlite":
            return f"printf('%08x-0000-4000-8000-%012x', ({i}) * 2654435761 % 4294967296, {i})"
        return (f"lpad(to_hex(({i})::bigint * 2654435761 % 4294967296), 8, '0') || "
                f"'-0000-4000-8000-' || lpad(to_hex(({i})::bigint), 12, '0')")


def _times(i: str, n: int, now_ms: int) -> dict[str, str]:
    """
    SQL expressions of run C{i}'s facts (C{i} an SQL expression).
    """
    gap = max(1, SPAN_MS // max(n, 1))
    h = f"(({i}) * 2654435761 % 4294967296)"
    created = f"({now_ms - SPAN_MS} + ({i}) * {gap})"
    started = f"({created} + 5 + {h} % 50)"
    a_start = f"({started} + 10)"
    a_end = f"({a_start} + 100 + {h} % 400)"
    b_start = f"({a_end} + 5)"
    b_end = f"({b_start} + 100 + ({h} / 7) % 400)"
    done = f"({b_end} + 20)"
    running = f"(({i}) >= {n - running_count(n)})"
    failed = f"(NOT {running} AND ({h} / 11) % 100 < {FAILED_PCT})"
    share, cases = 0, []
    for name, pct in FLOWS[:-1]:
        share += pct
        cases.append(f"WHEN ({i}) % 100 < {share} THEN '{name}'")
    flow = f"CASE {' '.join(cases)} ELSE '{FLOWS[-1][0]}' END"
    status = (f"CASE WHEN {running} THEN 'running' WHEN {failed} THEN 'failed' "
              "ELSE 'completed' END")
    return {"h": h, "created": created, "started": started, "a_start": a_start,
            "a_end": a_end, "b_start": b_start, "b_end": b_end, "done": done,
            "running": running, "failed": failed, "flow": flow, "status": status}


def load_statements(backend: str, n: int, now_ms: int) -> list[tuple[str, str]]:
    """
    C{(table, INSERT ... SELECT)} for C{n} runs and everything they have.
    """
    d = Dialect(backend)
    retry_at = now_ms + 86_400_000
    out = []

    t = _times("i", n, now_ms)
    with_, from_ = d.series(n)
    out.append(("runs", with_ + (
        "INSERT INTO runs (id, flow_name, status, name, description, input, output, "
        "error, metadata, stdout, stderr, termination_reason, idempotency_key, "
        "created_at, started_at, completed_at, trigger, scheduled_at, backfill_id, held, "
        "priority, wait_reason, sla_missed_at) "
        f"SELECT {d.run_id('i')}, {t['flow']}, {t['status']}, NULL, NULL, "
        "'{\"batch\":' || i || ',\"source\":\"s3://bucket/day\"}', "
        f"CASE WHEN {t['status']} = 'completed' THEN '{{\"rows\":' || {t['h']} % 1000000 || '}}' END, "
        f"CASE WHEN {t['failed']} THEN '{{\"reason\":\"stage_failed\",\"stage\":\"main\"}}' END, "
        "'{\"team\":\"data\"}', 'scheduled stage main\n', '', NULL, NULL, "
        f"{t['created']}, {t['started']}, CASE WHEN {t['running']} THEN NULL ELSE {t['done']} END, "
        f"'api', NULL, NULL, NULL, 0, NULL, NULL FROM {from_}")))

    out.append(("stages", with_ + (
        "INSERT INTO stages (run_id, name, seq, status, final, fail_fast, created_at, "
        "completed_at, flow_call_id, flow_call_interrupted) "
        f"SELECT {d.run_id('i')}, 'main', 1, {t['status']}, 1, 1, {t['started']} + 8, "
        f"CASE WHEN {t['running']} THEN NULL ELSE {t['b_end']} END, i + 1, 0 FROM {from_}")))

    out.append(("flow_calls", with_ + (
        "INSERT INTO flow_calls (run_id, completed_stage, failed_stage, status, "
        "scheduled_stages, exit_code, worker_id, pgid, created_at, started_at, completed_at) "
        f"SELECT {d.run_id('i')}, NULL, NULL, 'completed', 1, 0, 'bench:1', NULL, "
        f"{t['created']}, {t['started']}, {t['started']} + 8 FROM {from_}")))

    out.append(("step_deps", with_ + (
        f"INSERT INTO step_deps (run_id, step_id, dep_id) SELECT {d.run_id('i')}, 'b', 'a' "
        f"FROM {from_}")))

    # Steps: s = 2i (a) and 2i + 1 (b), inserted in that order.
    s_with, s_from = d.series(2 * n, "s")
    t = _times("s / 2", n, now_ms)
    b = "(s % 2 = 1)"
    b_pending = f"({b} AND {t['running']})"
    b_failed = f"({b} AND {t['failed']})"
    start = f"CASE WHEN {b} THEN {t['b_start']} ELSE {t['a_start']} END"
    end = f"CASE WHEN {b} THEN {t['b_end']} ELSE {t['a_end']} END"
    out.append(("steps", s_with + (
        "INSERT INTO steps (run_id, id, stage, name, status, depends_on, deps_left, "
        "max_retries, retry_count, retry_delay_ms, retry_backoff, timeout_seconds, env, "
        "fields, error, exit_code, created_at, queued_at, started_at, completed_at, "
        "duration_ms, ready_at, stdout, stderr, worker_id, termination_reason, claim_no, "
        "interruptions, pgid, priority, pool, pool_slots, requires, max_parallel, "
        "continue_on_failure, allowed_failure, inputs, wait_reason, gate) "
        f"SELECT {d.run_id('s / 2')}, CASE WHEN {b} THEN 'b' ELSE 'a' END, 'main', 'work', "
        f"CASE WHEN {b_pending} THEN 'pending' WHEN {b_failed} THEN 'failed' "
        "ELSE 'completed' END, "
        f"CASE WHEN {b} THEN '[\"a\"]' ELSE '[]' END, 0, CASE WHEN {b_pending} THEN 3 ELSE 0 END, "
        f"CASE WHEN {b_pending} THEN 1 ELSE 0 END, 60000, 2.0, NULL, '{{}}', "
        f"CASE WHEN {b} THEN '{{\"rows\":1}}' ELSE '{{}}' END, "
        f"CASE WHEN {b_failed} THEN '{{\"reason\":\"exit\",\"exitCode\":1}}' END, "
        f"CASE WHEN {b_pending} THEN 1 WHEN {b_failed} THEN 1 ELSE 0 END, "
        f"{t['started']} + 8, {t['started']} + 9, CASE WHEN {b_pending} THEN NULL ELSE {start} END, "
        f"CASE WHEN {b_pending} THEN NULL ELSE {end} END, "
        f"CASE WHEN {b_pending} THEN NULL ELSE {end} - {start} END, "
        f"CASE WHEN {b_pending} THEN {retry_at} ELSE 0 END, '', '', "
        f"CASE WHEN {b_pending} THEN NULL ELSE 'bench:1' END, NULL, 1, 0, NULL, 0, NULL, 1, "
        f"NULL, NULL, 0, 0, NULL, NULL, NULL FROM {s_from}")))

    # Events: e = 7i + k, k the run's k-th change; a running run has no 6th.
    e_with, e_from = d.series(EVENTS_PER_RUN * n, "e")
    t = _times(f"e / {EVENTS_PER_RUN}", n, now_ms)
    k = f"(e % {EVENTS_PER_RUN})"
    step_k = f"{k} IN (2, 3, 4, 5)"
    out.append(("events", e_with + (
        "INSERT INTO events (type, at, run_id, flow_name, stage, step_id, status, "
        "previous_status, data) "
        f"SELECT CASE WHEN {step_k} THEN 'step' ELSE 'run' END, "
        f"CASE {k} WHEN 0 THEN {t['created']} WHEN 1 THEN {t['started']} "
        f"WHEN 2 THEN {t['a_start']} WHEN 3 THEN {t['a_end']} WHEN 4 THEN {t['b_start']} "
        f"WHEN 5 THEN {t['b_end']} ELSE {t['done']} END, "
        f"{d.run_id(f'e / {EVENTS_PER_RUN}')}, {t['flow']}, "
        f"CASE WHEN {step_k} THEN 'main' END, "
        f"CASE WHEN {k} IN (2, 3) THEN 'a' WHEN {k} IN (4, 5) THEN 'b' END, "
        f"CASE {k} WHEN 0 THEN 'pending' WHEN 1 THEN 'running' WHEN 2 THEN 'running' "
        f"WHEN 4 THEN 'running' WHEN 3 THEN 'completed' "
        f"WHEN 5 THEN CASE WHEN {t['running']} THEN 'pending' WHEN {t['failed']} "
        "THEN 'failed' ELSE 'completed' END "
        f"ELSE {t['status']} END, "
        f"CASE {k} WHEN 0 THEN NULL WHEN 1 THEN 'pending' WHEN 2 THEN 'pending' "
        "WHEN 4 THEN 'pending' ELSE 'running' END, "
        f"CASE WHEN {step_k} THEN '{{\"attempt\":1}}' ELSE '{{}}' END "
        f"FROM {e_from} WHERE NOT ({k} = 6 AND {t['running']})")))
    return out


# ------------------------------------------------------------------ loading


def load_sqlite(path: Path, n: int, now_ms: int) -> dict:
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA cache_size = -1000000")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA journal_mode = DELETE")
        tables = {}
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        # The loaded tables' indexes are built once the rows are in, from
        # the very text the migrations left in sqlite_master.
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN ({','.join('?' * len(LOADED))})", LOADED).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        for table, sql in load_statements("sqlite", n, now_ms):
            t1 = time.perf_counter()
            conn.execute(sql)
            tables[table] = round(time.perf_counter() - t1, 1)
        t1 = time.perf_counter()
        for _, sql in indexes:
            conn.execute(sql)
        tables["indexes"] = round(time.perf_counter() - t1, 1)
        conn.execute("COMMIT")
        # No ANALYZE: MaxQ never runs it, so its plans must not need it.
        conn.execute("PRAGMA journal_mode = WAL")
        return {"seconds": round(time.perf_counter() - t0, 1), "per_table_s": tables,
                "file_mb": round(path.stat().st_size / 2**20)}
    finally:
        conn.close()


def pg_connect(db: str):
    import psycopg2

    return psycopg2.connect(f"dbname={db} user=postgres host=127.0.0.1 port=5432")


def load_postgres(db: str, n: int, now_ms: int) -> dict:
    conn = pg_connect(db)
    try:
        tables = {}
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
            cur.execute("SET maintenance_work_mem = '512MB'")
            cur.execute("SET work_mem = '256MB'")
            # Secondary indexes and foreign keys are built once the rows are
            # in, from their definitions as the migrations made them.
            cur.execute(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = "
                "current_schema() AND i.tablename = ANY(%s) AND NOT EXISTS (SELECT 1 "
                "FROM pg_constraint c WHERE c.conname = i.indexname)", (list(LOADED),))
            indexes = cur.fetchall()
            cur.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text = ANY(%s)",
                (list(LOADED),))
            foreign = cur.fetchall()
            for table, name, _ in foreign:
                cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            for name, _ in indexes:
                cur.execute(f'DROP INDEX "{name}"')
            for table, sql in load_statements("postgres", n, now_ms):
                t1 = time.perf_counter()
                cur.execute(sql)
                tables[table] = round(time.perf_counter() - t1, 1)
            t1 = time.perf_counter()
            for _, sql in indexes:
                cur.execute(sql)
            for table, name, definition in foreign:
                cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            tables["indexes"] = round(time.perf_counter() - t1, 1)
        conn.commit()
        conn.autocommit = True
        t1 = time.perf_counter()
        with conn.cursor() as cur:
            # What autovacuum does to tables of that age: statistics and the
            # visibility map (index-only scans).
            cur.execute("VACUUM ANALYZE")
            cur.execute("SELECT pg_database_size(current_database())")
            size = cur.fetchone()[0]
        tables["VACUUM ANALYZE"] = round(time.perf_counter() - t1, 1)
        return {"seconds": round(time.perf_counter() - t0, 1), "per_table_s": tables,
                "db_mb": round(size / 2**20)}
    finally:
        conn.close()


# ------------------------------------------------------------------ reading


def _summary(bench, times_s: list[float], cpu_s: float | None = None) -> dict:
    out = bench.summary_ms([t * 1000 for t in times_s])
    if cpu_s is not None:
        # The server's own CPU per request: what the latency would be on an
        # idle machine, less the database's share.
        out["server_cpu_ms"] = round(cpu_s * 1000 / max(len(times_s), 1), 3)
    return out


def _timed(bench, server, paths: list[str]) -> dict:
    """
    GET each of C{paths} (after three warm-up requests); the latencies and
    the server's CPU time per request.
    """
    client = server.client
    for path in paths[:3]:
        client.call("GET", path)
    times = []
    cpu0 = bench.proc_cpu_s(server.pid)
    for path in paths:
        status, body, elapsed = client.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {str(body)[:200]}")
        times.append(elapsed)
    cpu1 = bench.proc_cpu_s(server.pid)
    return _summary(bench, times, cpu1 - cpu0 if cpu0 is not None and cpu1 else None)


def listing_paths() -> dict[str, str]:
    filters = {
        "all": "",
        "flowName=ingest (50%)": "flowName=ingest",
        "flowName=audit (1%)": "flowName=audit",
        "status=completed": "status=completed",
        "status=failed": "status=failed",
        "status=running": "status=running",
        "flowName=audit&status=failed": "flowName=audit&status=failed",
    }
    paths = {}
    for fname, fq in filters.items():
        for sort in ("createdAt", "startedAt", "completedAt"):
            for order in ("desc", "asc"):
                q = "&".join(x for x in (fq, f"sortBy={sort}", f"sortOrder={order}") if x)
                paths[f"{fname} {sort} {order}"] = f"/api/v1/runs?{q}"
    return paths


def measure_reads(bench, ctx, server, n: int) -> dict:
    c = server.client
    count = ctx.counts["scale_requests"]
    out: dict = {"list_runs": {}, "totals": {}}
    for name, path in listing_paths().items():
        out["list_runs"][name] = {"path": path, **_timed(bench, server, [path] * count)}
        out["totals"][name.split(" ")[0]] = c.call("GET", path)["pagination"]
    out["runs_info"] = {}
    for name, path in (("limit=100", "/api/v1/runs?limit=100"),
                       ("offset=10000", "/api/v1/runs?offset=10000"),
                       ("flowName=audit offset=2000",
                        "/api/v1/runs?flowName=audit&offset=2000")):
        out["runs_info"][name] = {"path": path, **_timed(bench, server, [path] * count)}
    out["runs_worst_p95_ms"] = max(v["p95_ms"] for v in out["list_runs"].values())

    rnd = random.Random(17)
    out["run"] = _timed(bench, server, [f"/api/v1/runs/{run_id(rnd.randrange(n))}"
                                        for _ in range(count * 5)])
    top = EVENTS_PER_RUN * n
    out["events"] = _timed(bench, server, [f"/api/v1/events?after={rnd.randrange(top)}"
                                           for _ in range(count * 5)])
    out["events_info"] = {}
    for name, path in (("after=0 limit=1000", "/api/v1/events?after=0&limit=1000"),
                       ("flowName=audit after=0", "/api/v1/events?flowName=audit&after=0"),
                       ("type=run after=0", "/api/v1/events?type=run&after=0"),
                       ("runId", f"/api/v1/events?runId={run_id(n // 2)}")):
        out["events_info"][name] = {"path": path, **_timed(bench, server, [path] * count)}
    return out


# -------------------------------------------------------------------- claim


def _claim_statements(backend: str) -> dict[str, str]:
    if backend == "sqlite":
        from maxq.store.sqlite import SqliteTransaction as tx
    else:
        from maxq.store.postgres.transaction import PostgresTransaction as tx
    return {"steps": tx.CLAIM_STEPS, "flow_calls": tx.CLAIM_FLOW_CALLS}


def _runnable_work(backend: str, now_ms: int) -> list[tuple[str, tuple]]:
    """
    One running run with 10 runnable steps and one pending run with its
    first flow call: what the claims find.
    """
    ident = "ffffffff-0000-4000-8000-claimclaim01"
    pend = "ffffffff-0000-4000-8000-claimclaim02"
    stmts = [
        ("INSERT INTO runs (id, flow_name, status, created_at, started_at) "
         "VALUES (?, 'ingest', 'running', ?, ?)", (ident, now_ms, now_ms)),
        ("INSERT INTO runs (id, flow_name, status, created_at) "
         "VALUES (?, 'ingest', 'pending', ?)", (pend, now_ms)),
        ("INSERT INTO flow_calls (run_id, status, created_at) VALUES (?, 'pending', ?)",
         (pend, now_ms)),
    ]
    for k in range(10):
        stmts.append((
            "INSERT INTO steps (run_id, id, stage, name, status, depends_on, deps_left, "
            "max_retries, env, created_at, ready_at) "
            "VALUES (?, ?, 'main', 'work', 'pending', '[]', 0, 0, '{}', ?, ?)",
            (ident, f"s{k}", now_ms, now_ms)))
    return stmts


def measure_claim(backend: str, conn_factory, count: int) -> dict:
    """
    The claims' statements, each in a transaction rolled back afterwards.
    """
    statements = _claim_statements(backend)
    now_ms = int(time.time() * 1000)
    conn = conn_factory()
    ph = (lambda s: s) if backend == "sqlite" else (lambda s: s.replace("?", "%s"))
    out = {}
    try:
        times = {name: [] for name in statements}
        claimed = {}
        for _ in range(count):
            cur = conn.cursor()
            if backend == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            for sql, params in _runnable_work(backend, now_ms):
                cur.execute(ph(sql), params)
            for name, sql in statements.items():
                params = ((("bench-claim", now_ms, now_ms, 10)) if name == "steps"
                          else ("bench-claim", now_ms, 10))
                t0 = time.perf_counter()
                cur.execute(ph(sql), params)
                rows = cur.fetchall()
                times[name].append(time.perf_counter() - t0)
                claimed[name] = len(rows)
            conn.rollback()
        for name, values in times.items():
            ms = sorted(v * 1000 for v in values)
            out[name] = {"claimed": claimed[name], "n": len(ms),
                         "median_ms": round(statistics.median(ms), 3),
                         "p95_ms": round(ms[max(0, int(len(ms) * 0.95) - 1)], 3)}
    finally:
        conn.close()
    return out


# ------------------------------------------------------------------ pruning


def measure_prune(backend: str, conn_factory, batches: int) -> dict:
    """
    The retention's batches over the oldest events (7 days kept): the
    statements of L{maxq.store.history.EventPrimitives.prune_events}, one
    transaction per batch, each timed from its first statement to its
    commit (how long it holds its locks).
    """
    from maxq.streams import PRUNE_BATCH

    before = int(time.time() * 1000) - 7 * 86_400_000
    ph = (lambda s: s) if backend == "sqlite" else (lambda s: s.replace("?", "%s"))
    conn = conn_factory()
    times, through = [], 0
    try:
        cur = conn.cursor()
        for _ in range(batches):
            t0 = time.perf_counter()
            if backend == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            cur.execute(ph("SELECT max(id) FROM (SELECT id FROM events WHERE at < ? "
                           "ORDER BY id LIMIT ?) oldest"), (before, PRUNE_BATCH))
            highest = cur.fetchone()[0]
            if not highest:
                conn.commit()
                break
            cur.execute(ph("DELETE FROM events WHERE id <= ?"), (highest,))
            cur.execute(ph("DELETE FROM event_horizon WHERE pruned_through <= ?"), (highest,))
            cur.execute(ph("INSERT INTO event_horizon (pruned_through) SELECT ? "
                           "WHERE NOT EXISTS (SELECT 1 FROM event_horizon)"), (highest,))
            conn.commit()
            times.append(time.perf_counter() - t0)
            through = highest
    finally:
        conn.close()
    ms = sorted(t * 1000 for t in times)
    if not ms:
        return {"batches": 0}
    return {"batch_events": PRUNE_BATCH, "batches": len(ms), "through_id": through,
            "batch_median_ms": round(statistics.median(ms), 2),
            "batch_p95_ms": round(ms[max(0, int(len(ms) * 0.95) - 1)], 2),
            "batch_max_ms": round(ms[-1], 2),
            "events_per_s": round(PRUNE_BATCH * len(ms) / sum(times))}


# ---------------------------------------------------------------------- all


def _connector(ctx, backend: str, env: dict):
    if backend == "sqlite":
        path = env["MAXQ_SQLITE_PATH"]

        def connect():
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 5000")
            return _SqliteTx(conn)
        return connect
    db = env["MAXQ_DATABASE_URL"].rsplit("/", 1)[1]
    return lambda: pg_connect(db)


class _SqliteTx:
    """
    An sqlite3 connection with psycopg2's commit/rollback shape.
    """

    def __init__(self, conn):
        self.conn = conn

    def cursor(self):
        return self.conn.cursor()

    def commit(self):
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def rollback(self):
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self):
        self.conn.close()


def _fresh(bench, ctx, label: str, n: int) -> tuple[dict, dict]:
    """
    A database migrated by a server (then stopped) and loaded with C{n} runs.
    """
    env = ctx.database_env(f"{ctx.backend}-{label}")
    env["MAXQ_EVENT_RETENTION"] = "60d"
    server = ctx.new_server(f"{ctx.backend}-{label}-migrate", env)
    server.stop()
    now_ms = int(time.time() * 1000)
    print(f"  loading {n} runs", file=sys.stderr, flush=True)
    if ctx.backend == "sqlite":
        fill = load_sqlite(Path(env["MAXQ_SQLITE_PATH"]), n, now_ms)
    else:
        fill = load_postgres(env["MAXQ_DATABASE_URL"].rsplit("/", 1)[1], n, now_ms)
    fill["runs"] = n
    return env, fill


def measure(bench, ctx, results: dict) -> None:
    n = int(os.environ.get("BENCH_SCALE_RUNS") or ctx.counts["scale_runs"])
    backend = ctx.backend
    out: dict = {"runs_in_db": n}
    results["scale"] = out
    try:
        env, out["fill"] = _fresh(bench, ctx, "scale", n)
        server = ctx.new_server(f"{backend}-scale", env)
        try:
            out.update(measure_reads(bench, ctx, server, n))
        finally:
            server.stop()
        claims = ctx.counts["scale_claims"]
        out["claim"] = measure_claim(backend, _connector(ctx, backend, env), claims)
        small_env, _ = _fresh(bench, ctx, "scale-small", SMALL_RUNS)
        out["claim_small"] = measure_claim(backend, _connector(ctx, backend, small_env),
                                           claims)
        out["claim_small_runs"] = SMALL_RUNS
        out["claim_ratio"] = {
            name: round(out["claim"][name]["median_ms"]
                        / max(out["claim_small"][name]["median_ms"], 1e-3), 2)
            for name in out["claim"]}
        out["prune"] = measure_prune(backend, _connector(ctx, backend, env),
                                     ctx.counts["scale_prune_batches"])
    except Exception as e:  # noqa: BLE001 - report and go on
        out["error"] = f"{type(e).__name__}: {e}"
        print(f"  scale: ERROR {out['error']}", file=sys.stderr, flush=True)


def evaluate(res: dict, row) -> None:
    sc = res.get("scale")
    if not isinstance(sc, dict) or "error" in sc:
        return
    n = sc["runs_in_db"]
    worst = sc["runs_worst_p95_ms"]
    row(f"scale GET /runs worst p95 ({n} runs, 42 variants)", "ms", worst, None, "<= 20",
        worst <= 20)
    row("scale GET /runs/{id} p95", "ms", sc["run"]["p95_ms"], None, "<= 20",
        sc["run"]["p95_ms"] <= 20)
    row("scale GET /events?after= p95", "ms", sc["events"]["p95_ms"], None, "<= 20",
        sc["events"]["p95_ms"] <= 20)
    for name in ("steps", "flow_calls"):
        ratio = sc["claim_ratio"][name]
        row(f"scale claim {name} median, x {sc['claim_small_runs']} runs", "x",
            ratio, None, "<= 2", ratio <= 2)
    row("scale prune batch max", "ms", sc["prune"]["batch_max_ms"], None, "(info)", None,
        binding=False)
