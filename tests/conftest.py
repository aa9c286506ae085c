"""
Fixtures shared by every test: the reactor pytest-twisted runs.
"""

import pytest


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


def pytest_sessionfinish(session, exitstatus):
    from tests.postgres import drop_session_database

    drop_session_database()
