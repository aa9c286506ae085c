"""
Fixtures shared by every test: the reactor pytest-twisted runs, and the
in-memory server of the clock tests (C{world}).
"""

import inspect

import pytest

# An async test that has not finished after this long is cancelled where it
# waits and fails, naming the line it waited on (and what that awaited),
# instead of holding its worker until CI gives up.  The limit is far above
# the tests' own wait deadlines (15-40 s), so only a real hang reaches it.
ASYNC_TEST_LIMIT_S = 180


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


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return (yield)

    def bounded(**kwargs):
        from twisted.internet import defer, reactor
        from twisted.python import failure

        coroutine = test(**kwargs)
        waiting = defer.ensureDeferred(coroutine)
        where: list[str] = []

        def expire():
            where.extend(_suspended_at(coroutine) or ["(unknown)"])
            waiting.cancel()

        def finished(result):
            if timer.active():
                timer.cancel()
            if where and isinstance(result, failure.Failure) \
                    and result.check(defer.CancelledError):
                raise AssertionError(
                    f"the test was still waiting after {ASYNC_TEST_LIMIT_S} s, at\n  "
                    + "\n  ".join(where))
            return result

        timer = reactor.callLater(ASYNC_TEST_LIMIT_S, expire)
        return waiting.addBoth(finished)

    # pytest-twisted calls the item's function with the fixtures by name
    # and waits for the Deferred it returns.
    pyfuncitem.obj = bounded
    try:
        return (yield)
    finally:
        pyfuncitem.obj = test


def _suspended_at(coroutine) -> list[str]:
    """
    Where a suspended coroutine waits: its frame and those of what it awaits.
    """
    places, awaited = [], coroutine
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        places.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return places


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
