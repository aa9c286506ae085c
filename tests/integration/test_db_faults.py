"""
SQLite faults: another process holding the write lock, a full disk.  A
request is answered with a JSON 503 and changes nothing; a step's result
is retried until the database takes it.  (SQLite only: PostgreSQL has no
file lock to hold.)
"""

from __future__ import annotations

import sqlite3

import pytest_twisted

from .conftest import ServerFactory
from .exec_support import Scenario, settle, stage, step, timed


@pytest_twisted.async_yield_fixture()
async def sqlite_maxq(tmp_path, reactor):
    factory = ServerFactory(tmp_path, reactor)
    yield factory
    await factory.stop_all()


def _locker(server) -> sqlite3.Connection:
    """
    Another connection to the server's database file (as another process
    would have), with a short busy timeout of its own.
    """
    conn = sqlite3.connect(server.config.sqlite_path, isolation_level=None, timeout=2)
    return conn


async def _snapshot(server):
    status, runs = await server.get("/runs?limit=100")
    assert status == 200, runs
    return runs


@timed(30)
async def test_write_lock_held_elsewhere_gives_503_and_changes_nothing(sqlite_maxq):
    server = await sqlite_maxq.start()
    server.flows.add("f", "exit 0")
    before = await _snapshot(server)
    other = _locker(server)
    other.execute("BEGIN EXCLUSIVE")
    try:
        status, body = await server.post("/flows/f/runs", {"input": {"n": 1}})
        assert status == 503, body
        assert body["code"] == "SERVICE_UNAVAILABLE"
        assert set(body) == {"error", "code", "details"}
        # Reads still work (WAL), and show that nothing was written.
        assert await _snapshot(server) == before
    finally:
        other.execute("ROLLBACK")
        other.close()
    run = await server.trigger("f")
    assert (await server.wait_run(run["id"]))["status"] == "completed"


@timed(30)
async def test_full_disk_gives_503_and_changes_nothing(sqlite_maxq):
    server = await sqlite_maxq.start()
    server.flows.add("f", "exit 0")
    before = await _snapshot(server)
    conn = server.service.store.conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    # The file may not grow any more: the next page it needs is "disk full".
    conn.execute(f"PRAGMA max_page_count = {pages}")
    try:
        status, body = await server.post("/flows/f/runs",
                                         {"metadata": {"blob": "x" * 200_000}})
        assert status == 503, body
        assert "full" in body["details"]["reason"]
        assert await _snapshot(server) == before
    finally:
        conn.execute("PRAGMA max_page_count = 1073741823")
    run = await server.trigger("f")
    assert (await server.wait_run(run["id"]))["status"] == "completed"


@timed(30)
async def test_step_result_is_kept_while_the_database_is_locked(sqlite_maxq, reactor):
    server = await sqlite_maxq.start()
    sc = Scenario(server, "f").setup(
        plan={"start": stage("s", [step("a"), step("b", dependsOn=["a"])], final=True)},
        steps={"a": "sleep 0.3", "b": ""},
    )
    run_id = await sc.trigger()
    await sc.wait_file("a.start")
    other = _locker(server)
    other.execute("BEGIN EXCLUSIVE")
    try:
        # a ends while the lock is held; its result cannot be written yet.
        await sc.wait_file("a.end")
        await settle(reactor, 1.0)
        assert sc.starts("b") == 0
    finally:
        other.execute("ROLLBACK")
        other.close()
    run = await sc.finish(run_id)
    assert run["status"] == "completed", run
    a = await sc.step(run_id, "a")
    assert (a["status"], a["retryCount"], a["exitCode"]) == ("completed", 0, 0)
    assert (sc.starts("a"), sc.starts("b")) == (1, 1)
