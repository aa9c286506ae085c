"""
The store's declared interfaces are the whole contract: each backend
provides all of them, and the engine, scheduler, cluster and service use
nothing a store, a transaction or the peers do not declare.
"""

import ast
from pathlib import Path

import pytest
from twisted.internet import task
from zope.interface import implementer
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from maxq.store import IStore, ITransaction
from maxq.store.peers import IPeers, ISharedTransaction, SharedPeers, SinglePeers
from maxq.store.sql import SqlTransaction
from maxq.store.sqlite import SqliteStore, SqliteTransaction
from tests.fakes import resolved
from tests.test_store_postgres_batching import pg  # noqa: F401 (a fixture)

MAXQ = Path(__file__).resolve().parent.parent / "maxq"


@pytest.fixture
def sqlite_store():
    store = SqliteStore(":memory:", task.Clock())
    resolved(store.start())
    yield store
    resolved(store.stop())


@pytest.fixture
def postgres_store(pg):
    return pg


def _transaction(store):
    async def grab(tx):
        return tx

    return store.read(grab)


def test_sqlite_store_provides_its_interfaces(sqlite_store):
    assert verifyObject(IStore, sqlite_store)
    assert verifyObject(IPeers, sqlite_store.peers)
    assert isinstance(sqlite_store.peers, SinglePeers)
    assert sqlite_store.peers.shared is False
    tx = resolved(_transaction(sqlite_store))
    assert isinstance(tx, SqliteTransaction)
    assert verifyObject(ITransaction, tx)
    assert not ISharedTransaction.providedBy(tx)


async def test_postgres_store_provides_its_interfaces(postgres_store):
    assert verifyObject(IStore, postgres_store)
    assert verifyObject(IPeers, postgres_store.peers)
    assert isinstance(postgres_store.peers, SharedPeers)
    assert postgres_store.peers.shared is True
    tx = await _transaction(postgres_store)
    assert verifyObject(ISharedTransaction, tx)
    assert verifyObject(ITransaction, tx)


def test_single_peers_have_no_one_to_talk_to():
    peers = SinglePeers()
    assert resolved(peers.heartbeat("w1", 1000)) == []
    assert resolved(peers.leave("w1")) is None
    peers.add_observer(lambda message: None)
    assert peers.recovery_scope("w1") is None


async def test_shared_peers_keep_the_registry(postgres_store):
    peers = postgres_store.peers
    assert await peers.heartbeat("w1", 60_000) == []
    assert peers.recovery_scope("w1") == ["w1"]
    await peers.leave("w1")

    async def registered(tx):
        _, rows, _ = await tx._execute("SELECT id FROM workers")
        return rows

    assert await postgres_store.read(registered) == []


# a missing method fails verification --------------------------------------------


def _without(interface, base, missing):
    namespace = {name: getattr(base, name) for name in interface.names(all=True)
                 if name != missing}
    return implementer(interface)(type(f"Without_{missing}", (), namespace))


def test_a_transaction_missing_a_method_fails_verification():
    incomplete = _without(ITransaction, SqlTransaction, "claim_steps")
    assert ITransaction.implementedBy(incomplete)
    with pytest.raises(Invalid, match="claim_steps"):
        verifyObject(ITransaction, incomplete())


def test_a_shared_transaction_missing_heartbeat_fails_verification():
    from maxq.store.postgres.transaction import PostgresTransaction

    incomplete = _without(ISharedTransaction, PostgresTransaction, "heartbeat")
    with pytest.raises(Invalid, match="heartbeat"):
        verifyObject(ISharedTransaction, incomplete())


def test_peers_missing_recovery_scope_fail_verification():
    incomplete = _without(IPeers, SinglePeers, "recovery_scope")
    with pytest.raises(Invalid, match="recovery_scope"):
        verifyObject(IPeers, incomplete())


def test_a_store_without_peers_fails_verification(sqlite_store):
    del sqlite_store.peers
    try:
        with pytest.raises(Invalid, match="peers"):
            verifyObject(IStore, sqlite_store)
    finally:
        sqlite_store.peers = SinglePeers()


# what the callers use is declared -----------------------------------------------


def _callers() -> list[Path]:
    engine = [MAXQ / "engine.py"] if (MAXQ / "engine.py").exists() \
        else sorted((MAXQ / "engine").glob("*.py"))
    assert engine, "no engine module found"
    return [*engine, MAXQ / "cluster.py", MAXQ / "scheduler.py", MAXQ / "service.py",
            *sorted((MAXQ / "api").glob("*.py"))]


def _is(node, name: str) -> bool:
    """
    C{node} is C{name} or C{<anything>.name}.
    """
    return ((isinstance(node, ast.Name) and node.id == name)
            or (isinstance(node, ast.Attribute) and node.attr == name))


def _uses_in(source: str, filename: str, uses: dict[str, list]) -> dict[str, list]:
    """
    Add to C{uses} every attribute taken of C{tx}, of a C{store} and of
    C{peers} in C{source}: C{{kind: [(file, line, attribute)]}}.
    """
    for node in ast.walk(ast.parse(source, filename=filename)):
        if not isinstance(node, ast.Attribute):
            continue
        where = (filename, node.lineno, node.attr)
        if isinstance(node.value, ast.Name) and node.value.id == "tx":
            uses["tx"].append(where)
        elif _is(node.value, "store"):
            uses["store"].append(where)
        elif _is(node.value, "peers"):
            uses["peers"].append(where)
    return uses


def _uses() -> dict[str, list[tuple[str, int, str]]]:
    uses: dict[str, list] = {"tx": [], "store": [], "peers": []}
    for path in _callers():
        _uses_in(path.read_text(), path.relative_to(MAXQ.parent).as_posix(), uses)
    return uses


def _undeclared(uses, *interfaces):
    declared = set()
    for interface in interfaces:
        declared |= set(interface.names(all=True))
    return [use for use in uses if use[2] not in declared]


def test_every_method_called_on_a_transaction_is_declared():
    uses = _uses()["tx"]
    assert len(uses) > 50, "the walk found the engine's transaction functions"
    assert _undeclared(uses, ITransaction, ISharedTransaction) == []


def test_every_store_attribute_used_is_declared():
    uses = _uses()["store"]
    assert {"transaction", "read", "peers"} <= {u[2] for u in uses}
    assert _undeclared(uses, IStore) == []


def test_every_peers_attribute_used_is_declared():
    uses = _uses()["peers"]
    assert {"shared", "heartbeat", "leave", "add_observer", "recovery_scope"} <= \
        {u[2] for u in uses}
    assert _undeclared(uses, IPeers) == []


def test_no_caller_decides_on_the_backend_name():
    assert [u for u in _uses()["store"] if u[2] == "backend"] == []


def test_the_walk_catches_an_undeclared_call():
    uses = _uses_in("async def f(tx, engine):\n"
                    "    await tx.vacuum()\n"
                    "    engine.store.add_observer(print)\n"
                    "    engine.store.peers.forget()\n",
                    "x.py", {"tx": [], "store": [], "peers": []})
    assert _undeclared(uses["tx"], ITransaction, ISharedTransaction) == \
        [("x.py", 2, "vacuum")]
    assert _undeclared(uses["store"], IStore) == [("x.py", 3, "add_observer")]
    assert _undeclared(uses["peers"], IPeers) == [("x.py", 4, "forget")]
