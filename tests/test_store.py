"""
The store suite: the same tests for every backend (parametrised by the
C{store} fixture), through the public IStore/ITransaction interface only.
"""

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from maxq.config import Config
from maxq.model import Page
from maxq.store import IStore, ITransaction, open_store

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def store_config(request, tmp_path):
    settings = dict(flows_root=tmp_path, sqlite_path=tmp_path / "s.db")
    if request.param == "postgres":
        _server, _name, url = request.getfixturevalue("postgres_schema")
        settings["database_url"] = url
    return Config.from_env({}, **settings)


@pytest_twisted.async_yield_fixture()
async def store(store_config, reactor):
    s = open_store(store_config, reactor)
    await s.start()
    yield s
    await s.stop()


def run_row(run_id, status="running", flow="f", created=1, **extra):
    return {"id": run_id, "flow_name": flow, "status": status, "created_at": created,
            **extra}


def step_row(run_id, step_id, stage="s", deps_left=0, ready_at=0, **extra):
    return {"run_id": run_id, "id": step_id, "stage": stage, "name": "x",
            "status": "pending", "depends_on": [], "deps_left": deps_left,
            "max_retries": 0, "env": {}, "fields": {}, "created_at": 1,
            "ready_at": ready_at, **extra}


async def tx(store, fn):
    return await store.transaction(fn)


def test_store_provides_the_interface(store):
    assert verifyObject(IStore, store)


async def test_transaction_object_provides_the_interface(store):
    async def check(t):
        return verifyObject(ITransaction, t)

    assert await store.read(check)


async def test_run_round_trip_with_json_columns(store):
    async def write(t):
        await t.insert_run(run_row("r1", input={"a": [1, 2]}, metadata={"k": "v"}))

    await tx(store, write)

    async def read(t):
        return await t.get_run("r1")

    run = await store.read(read)
    assert run["input"] == {"a": [1, 2]} and run["metadata"] == {"k": "v"}
    assert run["output"] is None and run["stdout"] == ""


async def test_transaction_rolls_back_on_error(store):
    async def write(t):
        await t.insert_run(run_row("r1"))
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await tx(store, write)
    assert await store.read(lambda t: t.get_run("r1")) is None


async def test_idempotency_key_is_unique(store):
    async def write(t):
        await t.insert_run(run_row("r1", idempotency_key="k"))

    await tx(store, write)

    async def again(t):
        await t.insert_run(run_row("r2", idempotency_key="k"))

    with pytest.raises(Exception):
        await tx(store, again)
    found = await store.read(lambda t: t.get_run_by_idempotency_key("k"))
    assert found["id"] == "r1"


async def test_list_runs_filters_sorts_and_counts(store):
    async def write(t):
        for i in range(5):
            await t.insert_run(run_row(f"r{i}", flow="a" if i % 2 else "b",
                                       status="completed" if i < 2 else "running",
                                       created=100 + i))

    await tx(store, write)

    async def listing(t, sort_order="desc", offset=0, limit=2, **filters):
        return await t.list_runs(Page(limit, offset, "createdAt", sort_order), **filters)

    rows, total = await store.read(listing)
    assert total == 5 and [r["id"] for r in rows] == ["r4", "r3"]
    rows, total = await store.read(listing, sort_order="asc", offset=1)
    assert [r["id"] for r in rows] == ["r1", "r2"]
    rows, total = await store.read(listing, flow_name="a", limit=10)
    assert total == 2 and {r["id"] for r in rows} == {"r1", "r3"}
    rows, total = await store.read(listing, status="completed", limit=10)
    assert {r["id"] for r in rows} == {"r0", "r1"}


async def test_claim_respects_dependencies_readiness_and_run_status(store):
    async def write(t):
        await t.insert_run(run_row("r1"))
        await t.insert_run(run_row("r2", status="paused"))
        await t.insert_steps("r1", [
            step_row("r1", "ready"),
            step_row("r1", "blocked", deps_left=1),
            step_row("r1", "later", ready_at=5000),
        ], [("blocked", "ready")])
        await t.insert_steps("r2", [step_row("r2", "paused")], [])

    await tx(store, write)
    claimed = await tx(store, lambda t: t.claim_steps("w", 1000, 10))
    assert [(c["run_id"], c["id"], c["claim_no"]) for c in claimed] == [("r1", "ready", 1)]
    assert claimed[0]["flow_name"] == "f"
    assert await tx(store, lambda t: t.claim_steps("w", 1000, 10)) == []

    async def release(t):
        await t.release_dependents("r1", "ready")

    await tx(store, release)
    claimed = await tx(store, lambda t: t.claim_steps("w", 6000, 10))
    assert sorted(c["id"] for c in claimed) == ["blocked", "later"]


async def test_claim_never_returns_a_step_twice_and_honours_the_limit(store):
    async def write(t):
        await t.insert_run(run_row("r1"))
        await t.insert_steps("r1", [step_row("r1", f"s{i}") for i in range(25)], [])

    await tx(store, write)
    seen = []
    for _ in range(4):
        batch = await tx(store, lambda t: t.claim_steps("w", 10, 10))
        assert len(batch) <= 10
        seen.extend(c["id"] for c in batch)
    assert sorted(seen) == sorted(f"s{i}" for i in range(25))
    assert [s for s in seen] == [f"s{i}" for i in range(25)], "first come, first served"


async def test_recount_dependencies_after_reset(store):
    async def write(t):
        await t.insert_run(run_row("r1"))
        await t.insert_steps("r1", [step_row("r1", "a", status="completed"),
                                    step_row("r1", "b", status="failed"),
                                    step_row("r1", "c", deps_left=0)],
                             [("c", "a"), ("c", "b")])
        await t.recount_dependencies("r1")
        return await t.get_step("r1", "c")

    assert (await tx(store, write))["deps_left"] == 1


async def test_dependents_and_stage_counts(store):
    async def write(t):
        await t.insert_run(run_row("r1"))
        await t.insert_steps("r1", [step_row("r1", "a"), step_row("r1", "b"),
                                    step_row("r1", "c")], [("b", "a"), ("c", "b")])
        await t.update_steps("r1", ["a"], status="completed")
        return (await t.dependents_of("r1", ["a"]), await t.count_stage_steps("r1", "s"),
                await t.stage_has_unfinished("r1", "s"))

    dependents, counts, unfinished = await tx(store, write)
    assert dependents == ["b"]
    assert counts == {"completed": 1, "pending": 2}
    assert unfinished is True


async def test_flow_calls_are_claimed_in_order_one_per_run(store):
    async def write(t):
        await t.insert_run(run_row("r1"))
        await t.insert_run(run_row("r2"))
        first = await t.insert_flow_call("r1", None, None, 1)
        await t.insert_flow_call("r1", "s1", None, 2)
        await t.insert_flow_call("r2", None, None, 3)
        return first

    first = await tx(store, write)
    claimed = await tx(store, lambda t: t.claim_flow_calls("w", 10, 10))
    assert [(c["run_id"], c["completed_stage"]) for c in claimed] == [("r1", None),
                                                                     ("r2", None)]
    assert await tx(store, lambda t: t.claim_flow_calls("w", 10, 10)) == []

    async def finish(t):
        await t.update_flow_call(first, status="completed")

    await tx(store, finish)
    claimed = await tx(store, lambda t: t.claim_flow_calls("w", 10, 10))
    assert [(c["run_id"], c["completed_stage"]) for c in claimed] == [("r1", "s1")]


async def test_logs_newest_first_with_filters(store):
    async def write(t):
        await t.insert_run(run_row("r1"))
        for i, level in enumerate(["info", "error", "info"]):
            await t.insert_log({"run_id": "r1", "entity_type": "run", "entity_id": None,
                                "level": level, "message": f"m{i}", "metadata": {"i": i},
                                "created_at": i})

    await tx(store, write)
    rows, total = await store.read(lambda t: t.list_logs("r1", Page(10)))
    assert total == 3 and [r["message"] for r in rows] == ["m2", "m1", "m0"]
    rows, total = await store.read(lambda t: t.list_logs("r1", Page(10), level="info"))
    assert [r["metadata"]["i"] for r in rows] == [2, 0]
