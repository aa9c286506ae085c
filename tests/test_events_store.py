"""
The event primitives and the unit's event writing on both backends: events
are written once per committed unit (a replayed attempt's are forgotten),
a missing flow name is the run's, pruning moves the horizon; the hub's
subscriptions never deliver an event twice, wake-ups close together make
one read, and each event is encoded once for every stream; durations parse.
"""

import pytest
from twisted.internet import defer, task

from maxq.config import Config, ConfigError
from maxq.engine.unit import NoProcesses, transact
from maxq.api.sse import encoded
from maxq.streams import BATCH_S, EventHub, Subscription

from .test_store import run_row, store, store_config  # noqa: F401 (fixtures)


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
        await arrived
        assert batches == [[1, 2, 3]]
    finally:
        hub.stopService()


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
