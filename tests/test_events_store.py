"""
The event primitives and the unit's event writing on both backends: events
are written once per committed unit (a replayed attempt's are forgotten),
a missing flow name is the run's, pruning moves the horizon; the hub's
subscriptions never deliver an event twice; the settled bound never lets a
reader pass an id still committing (real out-of-order commits on
PostgreSQL); wake-ups close together make one read, and each event is
encoded once for every stream; durations parse.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, task

from maxq.api.sse import EventStream, encoded
from maxq.config import Config, ConfigError
from maxq.engine.unit import NoProcesses, transact
from maxq.store.history import CreatedSteps, EventProbe
from maxq.store.sqlite import SqliteStore
from maxq.streams import (BATCH_S, READ_INTERVAL_S, SETTLE_RETRY_S, Batch, EventHub,
                          Subscription, advance)

from .test_store import run_row, step_row, store, store_config  # noqa: F401 (fixtures)


class _Replayed(Exception):
    pass


class ReplayingStore:
    """
    Runs every unit twice: once rolled back (as a lost deadlock race would
    be), then for real.
    """

    def __init__(self, store):
        self.store = store
        self.peers = store.peers

    async def transaction(self, unit):
        async def doomed(tx):
            await unit(tx)
            raise _Replayed()

        with pytest.raises(_Replayed):
            await self.store.transaction(doomed)
        return await self.store.transaction(unit)


async def test_events_of_a_replayed_unit_are_written_once(store):  # noqa: F811
    await store.transaction(lambda tx: tx.insert_run(run_row("r1", flow="etl")))
    clock = task.Clock()
    clock.advance(5)
    woken = []

    async def unit(tx, effects):
        effects.event("run", "r1", status="running", previous_status="pending")
        effects.step_events("r1", [{"id": "a", "stage": "s", "status": "pending",
                                    "retry_count": 0}], "running", attempt=1)
        effects.event("schedule", None, "etl", data={"fired": True}, at=7)

    await transact(ReplayingStore(store), NoProcesses(), False, "w", unit, clock=clock,
                   on_events=lambda: woken.append(1))
    events = await store.read(lambda tx: tx.list_events(0, None, None, None, 100))
    assert [(e["type"], e["flow_name"], e["status"], e["previous_status"], e["at"])
            for e in events] == [("run", "etl", "running", "pending", 5000),
                                 ("step", "etl", "running", "pending", 5000),
                                 ("schedule", "etl", None, None, 7)]
    assert events[1]["data"] == {"attempt": 1, "retryCount": 0}
    assert events[1]["stage"] == "s" and events[1]["step_id"] == "a"
    assert woken == [1]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    only = await store.read(lambda tx: tx.list_events(0, "r1", "etl", ["step"], 100))
    assert [e["id"] for e in only] == [ids[1]]
    assert await store.read(lambda tx: tx.event_bounds()) == (ids[-1], 0)


async def test_created_steps_become_step_events_in_place_and_in_order(store):  # noqa: F811
    await store.transaction(lambda tx: tx.insert_run(run_row("r1", flow="etl")))
    new = [step_row("r1", sid, stage="big", created_at=100, name=f"n-{sid}")
           for sid in ("b", "a", "c")]
    others = [step_row("r1", "x", stage="other", created_at=100),
              step_row("r1", "y", stage="big", created_at=90),
              step_row("r1", "z", stage="big", created_at=100, status="completed")]
    await store.transaction(lambda tx: tx.insert_steps("r1", new + others, []))
    await store.transaction(lambda tx: tx.insert_events([
        {"type": "log", "at": 1, "run_id": "r1", "data": {}},
        CreatedSteps("r1", "big", 100, 7),
        {"type": "log", "at": 2, "run_id": "r1", "data": {}},
    ]))
    events = await store.read(lambda tx: tx.list_events(0, None, None, None, 10))
    assert [(e["type"], e["step_id"]) for e in events] == [
        ("log", None), ("step", "b"), ("step", "a"), ("step", "c"), ("log", None)]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 5
    step = events[2]
    assert (step["flow_name"], step["stage"], step["status"], step["previous_status"],
            step["at"]) == ("etl", "big", "pending", None, 7)
    assert step["data"] == {"attempt": 1, "retryCount": 0, "name": "n-a"}


async def test_prune_removes_old_events_and_moves_the_horizon(store):  # noqa: F811
    await store.transaction(lambda tx: tx.insert_run(run_row("r1")))
    rows = [{"type": "log", "at": at, "run_id": "r1", "data": {"n": at}}
            for at in (10, 20, 30, 40)]
    await store.transaction(lambda tx: tx.insert_events(rows))
    ids = [e["id"] for e in await store.read(
        lambda tx: tx.list_events(0, None, None, None, 10))]
    clock = task.Clock()
    clock.advance(0.035)
    hub = EventHub(store, clock, retention_ms=0)
    assert await hub.prune() == 1
    left = await store.read(lambda tx: tx.list_events(0, None, None, None, 10))
    assert [e["id"] for e in left] == ids[3:]
    assert await store.read(lambda tx: tx.event_bounds()) == (ids[3], ids[2])
    assert await hub.prune() == 0


class CountingReads:
    """
    The store, counting the hub's reads.
    """

    def __init__(self, store):
        self.store = store
        self.peers = store.peers
        self.reads = 0

    def read(self, fn):
        self.reads += 1
        return self.store.read(fn)


async def test_the_hub_reads_nothing_while_no_stream_is_open(store):  # noqa: F811
    await store.transaction(lambda tx: tx.insert_run(run_row("r1")))

    def log(at):
        return store.transaction(lambda tx: tx.insert_events(
            [{"type": "log", "at": at, "run_id": "r1", "data": {}}]))

    await log(1)
    counting = CountingReads(store)
    # The real reactor: on PostgreSQL the bound may wait for transactions
    # of other tests in progress on the cluster.
    from twisted.internet import reactor

    hub = EventHub(counting, reactor, retention_ms=60_000)
    await hub._start()
    start, _ = await store.read(lambda tx: tx.event_bounds())
    reads = counting.reads
    await log(2)
    hub.wake()
    await log(3)
    hub.wake()
    await task.deferLater(reactor, BATCH_S * 5, lambda: None)
    assert counting.reads == reads and hub.reading is None
    # A stream opened now, from the first event, gets every later one
    # once, though the hub skipped the commits before it.
    got = []
    sub = hub.subscribe(lambda e: True, got.extend, cursor=start)
    sub.go_live()

    async def delivered(ats):
        for _ in range(500):
            if [e["at"] for e in got] == ats:
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        assert [e["at"] for e in got] == ats

    hub.wake()
    await delivered([2, 3])
    await log(4)
    hub.wake()
    await delivered([2, 3, 4])
    hub.stopService()


def test_subscription_holds_live_events_until_the_replay_is_done():
    got = []
    sub = Subscription(lambda e: e["run_id"] == "r", got.extend, cursor=3)
    sub.offer([{"id": 4, "run_id": "r"}, {"id": 5, "run_id": "x"}])
    assert got == []
    # The replay reached id 4 meanwhile: only what is past it is delivered.
    sub.cursor = 4
    sub.go_live()
    sub.offer([{"id": 4, "run_id": "r"}, {"id": 6, "run_id": "r"}])
    assert [e["id"] for e in got] == [6]


def test_streams_of_one_filter_at_one_cursor_share_a_batch():
    got = {}

    def subscriber(name, key, cursor, accepts=None):
        sub = Subscription(accepts, lambda events: got.setdefault(name, events),
                           cursor=cursor, key=key)
        sub.go_live()
        return sub

    everything = (None, None, None)
    subs = [subscriber("a", everything, 3), subscriber("b", everything, 3),
            subscriber("late", everything, 5),
            subscriber("run r", ("r", None, None), 3, lambda e: e["run_id"] == "r")]
    events = [{"id": 4, "run_id": "x"}, {"id": 5, "run_id": "r"}, {"id": 6, "run_id": "r"}]
    shared: dict = {}
    for sub in subs:
        sub.offer(events, shared)
    assert got["a"] is got["b"]
    assert [e["id"] for e in got["a"]] == [4, 5, 6]
    assert [e["id"] for e in got["late"]] == [6]
    assert [e["id"] for e in got["run r"]] == [5, 6]
    assert all(sub.cursor == 6 for sub in subs)
    # A later read starts a new batch for the same filter.
    subs[0].offer([{"id": 7, "run_id": "x"}], {})
    assert [e["id"] for e in got["a"]] == [4, 5, 6]


def test_a_shared_batch_is_joined_once_for_every_stream():
    joined = []

    class Request:
        channel = None

        def __init__(self):
            self.written = []

        def write(self, data):
            self.written.append(data)

    def render(row):
        joined.append(row["id"])
        return {"id": row["id"], "type": row["type"]}

    batch = Batch([{"id": 1, "type": "log"}, {"id": 2, "type": "run"}])
    streams = [EventStream(Request(), None, None, None, None, render, 0, None)
               for _ in range(3)]
    for stream in streams:
        stream._send(batch)
    assert joined == [1, 2]
    assert len({id(s.request.written[0]) for s in streams}) == 1
    assert streams[0].request.written[0].startswith(b"id: 1\nevent: log\n")

async def test_wakes_close_together_make_one_read(store):  # noqa: F811
    await store.transaction(lambda tx: tx.insert_run(run_row("r1")))
    clock = task.Clock()
    hub = EventHub(store, clock, retention_ms=7 * 86_400_000)
    await hub.startService()
    try:
        batches = []
        arrived = defer.Deferred()

        def deliver(events):
            batches.append([e["data"]["n"] for e in events])
            if not arrived.called:
                arrived.callback(None)

        hub.subscribe(lambda e: True, deliver, hub.last_id).go_live()
        for n in (1, 2, 3):
            await store.transaction(lambda tx, n=n: tx.insert_events(
                [{"type": "log", "at": n, "run_id": "r1", "data": {"n": n}}]))
            hub.wake()
        clock.advance(BATCH_S / 2)
        assert batches == []
        clock.advance(BATCH_S / 2)
        # On PostgreSQL the bound may wait for transactions in progress
        # elsewhere on the cluster (other tests' databases): the hub's
        # retries run on this clock, so move it until the read is done.
        from twisted.internet import reactor
        for _ in range(2000):
            if arrived.called:
                break
            await task.deferLater(reactor, 0.005, lambda: None)
            clock.advance(SETTLE_RETRY_S)
        await arrived
        assert batches == [[1, 2, 3]]
    finally:
        hub.stopService()


async def test_reads_under_a_steady_flow_keep_the_read_interval():
    clock = task.Clock()
    store = SqliteStore(":memory:", clock)
    await store.start()
    await store.transaction(lambda tx: tx.insert_run(run_row("r1")))
    counting = CountingReads(store)
    hub = EventHub(counting, clock, retention_ms=60_000)
    await hub.startService()
    got = []
    hub.subscribe(None, got.extend, hub.last_id).go_live()

    async def commit(n):
        await store.transaction(lambda tx: tx.insert_events(
            [{"type": "log", "at": n, "run_id": "r1", "data": {"n": n}}]))
        hub.wake()

    try:
        # Each read is a probe and a page: two store reads.
        await commit(1)
        clock.advance(BATCH_S)
        assert [e["data"]["n"] for e in got] == [1] and counting.reads == 2
        # A commit just after that read waits out the interval, not BATCH_S.
        await commit(2)
        clock.advance(BATCH_S)
        assert counting.reads == 2
        clock.advance(READ_INTERVAL_S - BATCH_S)
        assert [e["data"]["n"] for e in got] == [1, 2] and counting.reads == 4
        # After a quiet spell, a commit goes out BATCH_S later again.
        clock.advance(1.0)
        await commit(3)
        clock.advance(BATCH_S)
        assert [e["data"]["n"] for e in got] == [1, 2, 3]
    finally:
        hub.stopService()
        await store.stop()

def test_a_frame_is_encoded_once_for_every_stream():
    calls = []

    def render(row):
        calls.append(row["id"])
        return {"id": row["id"], "type": row["type"]}

    row = {"id": 7, "type": "log"}
    first, again = encoded(row, render), encoded(row, render)
    assert first == again == b'id: 7\nevent: log\ndata: {"id":7,"type":"log"}\n\n'
    assert calls == [7]


@pytest.mark.parametrize("raw, ms", [("7d", 604_800_000), ("12h", 43_200_000),
                                      ("30m", 1_800_000), ("45s", 45_000),
                                      ("500ms", 500), ("90", 90_000)])
def test_event_retention_durations(tmp_path, raw, ms):
    cfg = Config.from_env({"MAXQ_FLOWS_ROOT": str(tmp_path), "MAXQ_EVENT_RETENTION": raw})
    assert cfg.event_retention_ms == ms


def test_event_retention_rejects_nonsense(tmp_path):
    with pytest.raises(ConfigError, match="MAXQ_EVENT_RETENTION"):
        Config.from_env({"MAXQ_FLOWS_ROOT": str(tmp_path), "MAXQ_EVENT_RETENTION": "soon"})
    assert Config.from_env({"MAXQ_FLOWS_ROOT": str(tmp_path)}).event_retention_ms == \
        7 * 86_400_000


# the settled bound -------------------------------------------------------------


def test_the_bound_follows_the_highest_id_where_ids_commit_in_order():
    # SQLite: in_progress is None.
    assert advance(None, None, EventProbe(7, None, None, 7)) == (7, None)
    assert advance(9, None, EventProbe(9, None, None, 9)) == (9, None)


def test_the_bound_stops_at_a_gap_until_its_transactions_have_ended():
    # 11 and 12 committed, 10 is missing while transactions 500 and 501
    # are in progress: the bound stays at 9 and the probe is kept.
    settled, candidate = advance(9, None, EventProbe(12, frozenset({500, 501}), 10, 12))
    assert settled == 9 and candidate == (12, frozenset({500, 501}))
    # 500 still runs: nothing moves, though 13 was drawn meanwhile.
    settled, candidate = advance(settled, candidate, EventProbe(13, frozenset({500, 502}), 10, 13))
    assert settled == 9 and candidate == (12, frozenset({500, 501}))
    # 500 and 501 ended without 10 (rolled back): ids up to 12 are final.
    settled, candidate = advance(settled, candidate, EventProbe(13, frozenset({502}), 10, 13))
    assert settled == 12
    assert candidate == (13, frozenset({502}))


def test_the_bound_moves_along_committed_ids_at_once():
    settled, candidate = advance(9, None, EventProbe(12, frozenset({500}), None, 12))
    assert settled == 12 and candidate is None
    # A scan ends early on a burst: up to what it checked.
    settled, candidate = advance(12, None, EventProbe(9000, frozenset({500}), None, 5012))
    assert settled == 5012 and candidate == (9000, frozenset({500}))
    # Nothing in progress: every id drawn is final.
    assert advance(5012, candidate, EventProbe(9001, frozenset(), None, 9001)) == (9001, None)


def test_the_first_bound_waits_for_what_was_in_progress():
    settled, candidate = advance(None, None, EventProbe(40, frozenset({7}), None, 40))
    assert settled is None and candidate == (40, frozenset({7}))
    assert advance(None, candidate, EventProbe(41, frozenset({8}), None, 40)) == \
        (40, (41, frozenset({8})))


@pytest_twisted.async_yield_fixture()
async def pg_hub(postgres_database, reactor):
    from maxq.store.postgres import PostgresStore

    _server, _name, url = postgres_database
    store = PostgresStore(url, reactor)
    await store.start()
    await store.transaction(lambda tx: tx.insert_run(run_row("r1")))
    hub = EventHub(store, reactor, retention_ms=60_000)
    yield store, hub, url
    hub.stopService()
    await store.stop()


def _open_event_transaction(url):
    """
    Another server's transaction: it drew an event id and has not committed.
    """
    import psycopg2

    conn = psycopg2.connect(url)
    cur = conn.cursor()
    cur.execute("SELECT pg_current_xact_id()")
    cur.execute("INSERT INTO events (type, at, run_id, data) VALUES ('log', 1, 'r1', '{}') "
                "RETURNING id")
    return conn, cur.fetchone()[0]


async def _commit_event(store, at):
    await store.transaction(lambda tx: tx.insert_events(
        [{"type": "log", "at": at, "run_id": "r1", "data": {}}]))
    events = await store.read(lambda tx: tx.list_events(0, None, None, None, 1000))
    return events[-1]["id"]


@pytest.mark.parametrize("ending", ["commit", "rollback"])
async def test_no_reader_passes_an_id_still_committing(pg_hub, ending):
    from twisted.internet import reactor

    store, hub, url = pg_hub
    first = await _commit_event(store, 1)
    assert await hub.settle() == first
    other, held = _open_event_transaction(url)
    try:
        later = await _commit_event(store, 2)
        assert held < later
        # The later id is committed, but the held one may still come.
        bound = await hub.settle()
        assert bound == held - 1
        rows = await store.read(lambda tx: tx.list_events(first, None, None, None, 10, bound))
        assert rows == []
    finally:
        getattr(other, ending)()
        other.close()
    # Past a rolled-back id once the transactions in progress at the probe
    # that found its gap have ended (the snapshot is the cluster's: other
    # databases' transactions count too, hence the wait).
    for _ in range(500):
        bound = await hub.settle()
        if bound >= later:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    assert bound == later
    rows = await store.read(lambda tx: tx.list_events(first, None, None, None, 10, bound))
    assert [r["id"] for r in rows] == ([held, later] if ending == "commit" else [later])
