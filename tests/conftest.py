"""
Fixtures shared by every test: the reactor pytest-twisted runs, and the
in-memory server of the clock tests (C{world}).
"""

import pytest


@pytest.fixture
def world(tmp_path):
    """
    A whole server on a clock with fake processes (L{tests.fakes.World}).
    """
    from tests.fakes import World

    w = World(tmp_path)
    yield w
    w.stop()


@pytest.fixture
def reactor():
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest.fixture
def postgres_schema():
    """
    A fresh schema in the session's PostgreSQL database: C{(server, name, url)}.
    """
    from tests.postgres import postgres_server

    server = postgres_server()
    name, url = server.new_schema()
    yield server, name, url
    server.drop_schema(name)


@pytest.fixture
def postgres_database():
    """
    The session's shared, migrated schema, emptied after the test:
    C{(server, name, url)}.  For tests that do not test migrations.
    """
    from tests.postgres import postgres_server

    server = postgres_server()
    name, url = server.shared_schema()
    yield server, name, url
    server.empty_schema(name)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "sqlite_only: run only on the SQLite backend (the PostgreSQL "
        "parameter of the maxq fixture is deselected)")
    config.addinivalue_line(
        "markers", "long: takes tens of seconds on its own; run first, so that "
        "under pytest-xdist it never ends the run on one worker alone")


def pytest_collection_modifyitems(config, items):
    dropped = [item for item in items
               if item.get_closest_marker("sqlite_only")
               and getattr(item, "callspec", None) is not None
               and item.callspec.params.get("maxq") == "postgres"]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]
    # Longest first: xdist hands tests out in this order, and the short ones
    # left at the end fill in around the long ones (a stable sort: the
    # order is otherwise the collection's, the same on every worker).
    items.sort(key=lambda item: 0 if (item.get_closest_marker("long")
                                      or item.get_closest_marker("slow")) else 1)


def pytest_sessionfinish(session, exitstatus):
    from tests.postgres import drop_session_database

    drop_session_database()
