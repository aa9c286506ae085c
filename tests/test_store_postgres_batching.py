"""
The PostgreSQL store's round trips: what each transaction sends together,
and that sending less keeps every guarantee (atomicity, run locks, retries
of lost races, recovery from lost connections, NOTIFY only when another
server listens).  Real PostgreSQL only; no timing asserts.
"""

from __future__ import annotations

import json

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import LogLevel, globalLogPublisher

from maxq.errors import StoreUnavailable
from maxq.store.postgres import PostgresStore


@pytest_twisted.async_yield_fixture()
async def pg(postgres_database, reactor):
    _server, _name, url = postgres_database
    store = PostgresStore(url, reactor)
    await store.start()
    yield store
    await store.stop()


def run_row(run_id, status="running", **extra):
    return {"id": run_id, "flow_name": "f", "status": status, "created_at": 1, **extra}


def step_row(run_id, step_id, status="pending", **extra):
    return {"run_id": run_id, "id": step_id, "stage": "s", "name": "x", "status": status,
            "depends_on": [], "deps_left": 0, "max_retries": 0, "env": {}, "fields": {},
            "created_at": 1, "ready_at": 0, **extra}


async def counted(store, fn, *args):
    """
    Run C{fn} in a transaction; fires with C{(result, round trips)}.
    """
    seen = []

    async def unit(tx):
        seen.append(tx)
        return await fn(tx, *args)

    result = await store.transaction(unit)
    return result, sum(t.round_trips for t in seen[-1:])


async def setup_run(store, run_id="r1", steps=("a", "b")):
    async def write(tx):
        await tx.insert_run(run_row(run_id))
        await tx.insert_stage({"run_id": run_id, "name": "s", "status": "running",
                               "final": 1, "fail_fast": 1, "created_at": 1})
        await tx.insert_steps(run_id, [step_row(run_id, s, status="running")
                                       for s in steps], [])

    await store.transaction(write)


async def eventually(check, what, tries=400, delay=0.05):
    """
    Poll C{check()} (a coroutine function) until it returns a true value.
    """
    from twisted.internet import reactor

    for _ in range(tries):
        value = await check()
        if value:
            return value
        await task.deferLater(reactor, delay, lambda: None)
    raise AssertionError(f"gave up waiting for {what}")


# round trips -------------------------------------------------------------------


async def test_a_step_result_costs_three_round_trips(pg):
    await setup_run(pg)

    async def finished(tx):
        await tx.lock_run("r1")
        step = await tx.get_step("r1", "a")
        await tx.update_step("r1", "a", status="completed", exit_code=0,
                             completed_at=step["created_at"] + 1)
        await tx.release_dependents("r1", "a")
        unfinished = await tx.stage_has_unfinished("r1", "s")
        await tx.notify(json.dumps({"from": "me", "wake": True}))
        return unfinished

    unfinished, trips = await counted(pg, finished)
    # BEGIN + lock + read | update + release + read | COMMIT
    assert (unfinished, trips) == (True, 3)
    step = await pg.read(lambda tx: tx.get_step("r1", "a"))
    assert (step["status"], step["exit_code"]) == ("completed", 0)


async def test_reads_alone_send_no_begin_or_commit(pg):
    await setup_run(pg)

    async def reads(tx):
        return await tx.get_run("r1"), await tx.list_stages("r1")

    (run, stages), trips = await counted(pg, reads)
    assert run["id"] == "r1" and [s["name"] for s in stages] == ["s"]
    assert trips == 2


async def test_writes_alone_go_in_one_round_trip(pg):
    await setup_run(pg)

    async def writes(tx):
        await tx.lock_run("r1")
        await tx.update_run("r1", status="paused")
        await tx.update_steps("r1", ["a", "b"], status="pending")
        await tx.record_step_pgid("r1", "a", 0, 1234)

    _, trips = await counted(pg, writes)
    assert trips == 1
    run = await pg.read(lambda tx: tx.get_run("r1"))
    steps = await pg.read(lambda tx: tx.steps_with_status("r1", ["pending"]))
    assert run["status"] == "paused" and sorted(s["id"] for s in steps) == ["a", "b"]


async def test_a_unit_that_does_nothing_costs_nothing(pg):
    async def nothing(tx):
        return 42

    assert await counted(pg, nothing) == (42, 0)


async def test_claims_carry_the_flow_name_in_one_statement(pg):
    async def write(tx):
        await tx.insert_run(run_row("r1"))
        await tx.insert_steps("r1", [step_row("r1", "a"), step_row("r1", "b")], [])
        await tx.insert_flow_call("r1", None, None, 1)

    await pg.transaction(write)

    async def claim(tx):
        return (await tx.claim_flow_calls("w", 5, 10),
                await tx.claim_steps("w", 5, 10))

    (calls, steps), trips = await counted(pg, claim)
    assert [c["flow_name"] for c in calls] == ["f"]
    assert [(s["id"], s["flow_name"]) for s in steps] == [("a", "f"), ("b", "f")]
    assert trips == 3


# atomicity -------------------------------------------------------------------------


async def test_held_writes_are_dropped_when_the_unit_fails(pg):
    await setup_run(pg)

    async def half(tx):
        await tx.update_run("r1", status="failed")
        await tx.get_run("r1")
        await tx.update_step("r1", "a", status="failed")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await pg.transaction(half)
    run = await pg.read(lambda tx: tx.get_run("r1"))
    step = await pg.read(lambda tx: tx.get_step("r1", "a"))
    assert (run["status"], step["status"]) == ("running", "running")


async def test_a_held_write_that_fails_rolls_back_the_whole_unit(pg):
    async def first(tx):
        await tx.insert_run(run_row("r1", idempotency_key="k"))

    await pg.transaction(first)
    attempts = []

    async def clash(tx):
        attempts.append(1)
        await tx.insert_run(run_row("r2"))
        await tx.insert_run(run_row("r3", idempotency_key="k"))   # held: fails later
        return await tx.get_run("r2")

    with pytest.raises(psycopg2.IntegrityError):
        await pg.transaction(clash)
    assert len(attempts) > 1    # a unique violation is retried, as before
    assert await pg.read(lambda tx: tx.get_run("r2")) is None
    # The connection is still good.
    assert (await pg.read(lambda tx: tx.get_run("r1")))["id"] == "r1"


async def test_a_write_failing_at_commit_leaves_nothing(pg):
    async def first(tx):
        await tx.insert_run(run_row("r1", idempotency_key="k"))

    await pg.transaction(first)

    async def clash(tx):
        await tx.insert_run(run_row("r2"))
        await tx.insert_run(run_row("r3", idempotency_key="k"))

    with pytest.raises(psycopg2.IntegrityError):
        await pg.transaction(clash)
    assert await pg.read(lambda tx: tx.get_run("r2")) is None


async def test_a_swallowed_statement_error_never_commits(pg):
    await setup_run(pg)

    async def careless(tx):
        await tx.update_run("r1", status="failed")
        try:
            await tx._execute("SELECT 1 / 0")
        except psycopg2.Error:
            pass

    with pytest.raises(psycopg2.DataError):
        await pg.transaction(careless)
    assert (await pg.read(lambda tx: tx.get_run("r1")))["status"] == "running"


# locks and lost races -------------------------------------------------------------


async def test_a_held_lock_run_is_taken_before_the_next_statement(pg):
    await setup_run(pg)
    locked = defer.Deferred()
    go_on = defer.Deferred()

    async def first(tx):
        await tx.lock_run("r1")
        await tx.get_run("r1")          # the lock is taken with this read
        locked.callback(None)
        await go_on
        await tx.update_run("r1", name="first")

    async def second(tx):
        await tx.lock_run("r1")
        run = await tx.get_run("r1")    # waits for the first to commit
        await tx.update_run("r1", name=f"{run['name']}+second")

    d1 = pg.transaction(first)
    await locked
    d2 = pg.transaction(second)
    # The second is blocked on the lock until the first commits.
    assert not d2.called
    go_on.callback(None)
    await d1
    await d2
    assert (await pg.read(lambda tx: tx.get_run("r1")))["name"] == "first+second"


async def test_a_lost_deadlock_race_is_run_again_on_a_live_connection(pg):
    attempts = []

    async def unlucky(tx):
        attempts.append(1)
        await tx.insert_run(run_row(f"r{len(attempts)}"))
        if len(attempts) == 1:
            await tx._execute(
                "DO $$ BEGIN RAISE EXCEPTION 'lost' USING ERRCODE = '40P01'; END $$")
        return len(attempts)

    assert await pg.transaction(unlucky) == 2
    assert not any(c.detector.connectionIsDead for c in pg.pool.connections)
    assert await pg.read(lambda tx: tx.get_run("r1")) is None
    assert (await pg.read(lambda tx: tx.get_run("r2")))["id"] == "r2"


async def test_many_queued_units_complete(pg):
    await setup_run(pg, steps=[f"s{i}" for i in range(50)])

    async def finish(tx, i):
        await tx.lock_run("r1")
        await tx.get_step("r1", f"s{i}")
        await tx.update_step("r1", f"s{i}", status="completed")
        return await tx.stage_has_unfinished("r1", "s")

    results = await defer.gatherResults(
        [pg.transaction(finish, i) for i in range(50)])
    # The run lock serialises them in whatever order they take it: exactly
    # one sees the stage with nothing left to run.
    assert results.count(False) == 1


@pytest_twisted.async_yield_fixture()
async def small_pg(postgres_database, reactor):
    _server, _name, url = postgres_database
    store = PostgresStore(url, reactor, pool_size=1, pool_max=3)
    await store.start()
    yield store
    await store.stop()


async def test_the_pool_grows_while_units_wait_on_a_run_lock(small_pg):
    pg = small_pg
    await setup_run(pg, "r1")
    await setup_run(pg, "r2")
    locked = defer.Deferred()
    go_on = defer.Deferred()

    async def holder(tx):
        await tx.lock_run("r1")
        await tx.get_run("r1")
        locked.callback(None)
        await go_on
        await tx.update_run("r1", name="held")

    async def blocked(tx):
        await tx.lock_run("r1")
        return (await tx.get_run("r1"))["name"]

    d1 = pg.transaction(holder)
    await locked
    d2 = pg.transaction(blocked)
    # Two connections are taken, one of them waiting for the lock: a third
    # unit still gets through.
    assert (await pg.read(lambda tx: tx.get_run("r2")))["id"] == "r2"
    assert not d2.called
    go_on.callback(None)
    await d1
    assert await d2 == "held"
    assert 2 <= len(pg.pool.connections) <= 3


# lost connections ------------------------------------------------------------------


def _terminate(server, pids):
    server.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   f"WHERE pid IN ({','.join(str(p) for p in pids)})")


async def test_terminated_connections_fail_fast_then_recover(pg, postgres_database):
    server, _name, _url = postgres_database
    await setup_run(pg)
    pids = [c.pollable().get_backend_pid() for c in pg.pool.connections]
    _terminate(server, pids)

    async def read(tx):
        return await tx.get_run("r1")

    # Every queued unit fails, none hangs, none recurses.
    outcomes = await defer.DeferredList([pg.read(read) for _ in range(300)],
                                        consumeErrors=True)
    failures = [r for ok, r in outcomes if not ok]
    assert failures and all(f.check(StoreUnavailable) for f in failures)

    async def healthy():
        try:
            return (await pg.read(read))["id"] == "r1"
        except StoreUnavailable:
            return False

    await eventually(healthy, "the pool to reconnect")
    # Writes work again, on every connection.
    for i in range(8):
        await pg.transaction(lambda tx, i=i: tx.update_run("r1", name=f"n{i}"))
    assert await pg.ping()


async def test_notify_is_heard_again_after_the_listener_reconnects(pg, postgres_database):
    server, _name, _url = postgres_database
    heard = []
    pg.add_observer(heard.append)

    async def register(tx, worker):
        return await tx.heartbeat(worker, 60_000)

    await pg.transaction(register, "other")
    _terminate(server, [pg.listener.pollable().get_backend_pid()])

    async def wake(tx, n):
        await tx.notify(json.dumps({"from": "me", "n": n}))

    async def delivered():
        n = len(heard) + 1000
        await pg.transaction(wake, n)
        await task.deferLater(pg.reactor, 0.05, lambda: None)
        return any(m.get("n") == n for m in heard)

    await eventually(delivered, "a notification after the listener reconnected")


async def test_losing_the_listener_is_a_warning_not_an_unhandled_error(pg, postgres_database):
    server, _name, _url = postgres_database
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        old = pg.listener.pollable().get_backend_pid()
        _terminate(server, [old])

        async def reconnected():
            conn = pg.listener.pollable()
            return not conn.closed and conn.get_backend_pid() != old

        await eventually(reconnected, "the listener to reconnect")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if "log_failure" in e], events
    lost = [e for e in events if "LISTEN connection lost" in e.get("log_format", "")]
    assert len(lost) == 1 and lost[0]["log_level"] == LogLevel.warn


# NOTIFY only when another server listens --------------------------------------------


async def test_notify_is_sent_only_when_another_server_is_registered(pg):
    heard = []
    got = defer.Deferred()

    def observer(message):
        heard.append(message)
        if message.get("n") == 2 and not got.called:
            got.callback(None)

    pg.add_observer(observer)

    async def wake(tx, n):
        await tx.notify(json.dumps({"from": "me", "n": n}))

    async def register(tx, worker):
        return await tx.heartbeat(worker, 60_000)

    await pg.transaction(register, "me")
    await pg.transaction(wake, 1)         # alone: not sent
    await pg.transaction(register, "other")
    await pg.transaction(wake, 2)         # another server: sent
    await got
    # Notifications arrive in commit order: had the first been sent, it
    # would have arrived before the second.
    assert [m["n"] for m in heard] == [2]


async def test_a_notify_without_a_sender_is_always_sent(pg):
    got = defer.Deferred()
    pg.add_observer(lambda m: got.called or got.callback(m))

    async def wake(tx):
        await tx.notify(json.dumps({"wake": True}))

    await pg.transaction(wake)
    assert await got == {"wake": True}


# prepared statements ----------------------------------------------------------------


async def test_a_statement_used_often_is_prepared_once_per_connection(pg):
    await setup_run(pg, steps=[f"s{i}" for i in range(6)])

    async def pgids(tx):
        # The same statement six times in one round trip.
        for i in range(6):
            await tx.record_step_pgid("r1", f"s{i}", 0, 100 + i)

    for _ in range(3):
        _, trips = await counted(pg, pgids)
        assert trips == 1
    prepared = set().union(*(c.prepared for c in pg.pool.connections))
    assert prepared
    steps = await pg.read(lambda tx: tx.running_steps())
    assert sorted(s["pgid"] for s in steps) == [100 + i for i in range(6)]


async def test_a_statement_that_cannot_be_prepared_is_sent_as_text(pg):
    # PostgreSQL cannot type "$1" alone: PREPARE fails, the unit runs again
    # with the statement as text, and it stays text from then on.
    attempts = []

    async def echo(tx, value):
        attempts.append(value)
        return await tx._scalar("SELECT ? AS v", (value,))

    for i in range(4):
        assert await pg.read(echo, f"v{i}") == f"v{i}"
    assert len(attempts) <= 5
    assert not any(c.detector.connectionIsDead for c in pg.pool.connections)


@pytest_twisted.async_yield_fixture()
async def private_pg(postgres_schema, reactor):
    server, name, url = postgres_schema
    store = PostgresStore(url, reactor, pool_size=1, pool_max=1)
    await store.start()
    yield store, server, name
    await store.stop()


async def test_a_prepared_statement_made_stale_by_a_migration_is_prepared_again(private_pg):
    store, server, schema = private_pg
    await setup_run(store)
    for _ in range(4):
        run = await store.read(lambda tx: tx.get_run("r1"))
    assert run["id"] == "r1" and store.pool.connections[0].prepared
    server.execute("ALTER TABLE runs ADD COLUMN extra INTEGER NOT NULL DEFAULT 7",
                   schema=schema)
    run = await store.read(lambda tx: tx.get_run("r1"))
    assert run["extra"] == 7


def _backends(server, pids):
    """
    Which of C{pids} (and of new sessions of this test's user) are connected.
    """
    rows = server.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                          "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
    return {row[0] for row in rows}


async def test_a_store_stopped_while_reconnecting_stays_closed(postgres_database, reactor):
    server, _name, url = postgres_database
    store = PostgresStore(url, reactor)
    await store.start()
    before = _backends(server, [])
    ours = [c.pollable().get_backend_pid() for c in store.pool.connections]
    ours.append(store.listener.pollable().get_backend_pid())
    assert set(ours) <= before
    _terminate(server, ours)
    # A failing unit makes the pool notice and start reconnecting at once.
    outcome = await defer.DeferredList([store.read(lambda tx: tx.get_run("x"))],
                                       consumeErrors=True)
    assert not outcome[0][0]
    await store.stop()
    # The reconnection retries back off from 0.25 s: after several of them,
    # no connection of this store is open again.
    for _ in range(30):
        await task.deferLater(reactor, 0.05, lambda: None)
        leftover = _backends(server, []) - before
        assert not leftover, leftover
