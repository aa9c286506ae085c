"""
Helpers of the schedule tests (this module holds no tests): flows that
record how they were called, direct reads and writes of the server's
database (to stand in for downtime), and waiting for runs of a flow.
"""

from __future__ import annotations

import time
from pathlib import Path

from twisted.internet import task

# flow.sh: one line per call in calls.log (in the flow's directory, its
# cwd): trigger, fire time, run id, start time (epoch seconds), then an
# optional sleep given by the SLEEP file.
RECORDING_FLOW = """
echo "$MAXQ_TRIGGER ${MAXQ_SCHEDULED_AT:--} $MAXQ_RUN_ID $EPOCHREALTIME" >> calls.log
if [ -f SLEEP ]; then sleep "$(cat SLEEP)"; fi
if [ -f FAIL_AT ] && [ "$(cat FAIL_AT)" = "$MAXQ_SCHEDULED_AT" ]; then exit 3; fi
exit 0
"""


def add_scheduled(server, name: str, yaml: str, sleep: float | None = None) -> Path:
    flow_dir = server.flows.add(name, RECORDING_FLOW, flow_yaml=yaml)
    if sleep is not None:
        (flow_dir / "SLEEP").write_text(str(sleep))
    return flow_dir


def calls(flow_dir: Path) -> list[list[str]]:
    try:
        text = (flow_dir / "calls.log").read_text()
    except FileNotFoundError:
        return []
    return [line.split() for line in text.splitlines() if line.strip()]


async def runs_of(server, flow: str, **query) -> list[dict]:
    qs = "&".join(f"{k}={v}" for k, v in {"flowName": flow, "limit": 100,
                                           "sortBy": "createdAt", "sortOrder": "asc",
                                           **query}.items())
    status, body = await server.get(f"/runs?{qs}")
    assert status == 200, body
    return body["runs"]


async def wait_runs(server, flow: str, count: int, timeout: float = 20.0,
                    finished: bool = False) -> list[dict]:
    async def check():
        runs = await runs_of(server, flow)
        if finished:
            runs = [r for r in runs if r["status"] in ("completed", "failed")]
        return runs if len(runs) >= count else None

    return await server.wait_for(check, timeout, what=f"{count} runs of {flow}")


async def sleep(reactor, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def db(server, sql: str, *params) -> list[tuple]:
    """
    Run one statement on the server's database (C{?} placeholders) and
    return its rows; commits.
    """
    url = server.config.database_url
    if url:
        import psycopg2

        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params)
                rows = cur.fetchall() if cur.description else []
            conn.commit()
            return [tuple(r) for r in rows]
        finally:
            conn.close()
    import sqlite3

    conn = sqlite3.connect(server.config.sqlite_path)
    try:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


async def wait_phase(reactor, period_s: float, low: float, high: float) -> None:
    """
    Wait until the wall clock is between C{low} and C{high} seconds past a
    multiple of C{period_s}: a start that is not close to a fire time.
    """
    while not low <= time.time() % period_s <= high:
        await sleep(reactor, 0.05)


def intervals_overlap(runs: list[dict]) -> bool:
    spans = sorted((r["startedAt"], r["completedAt"]) for r in runs if r["startedAt"])
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
