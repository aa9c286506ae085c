"""
Fixtures shared by every test: the reactor pytest-twisted runs.
"""

import pytest


@pytest.fixture
def reactor():
    from twisted.internet import reactor as global_reactor

    return global_reactor
