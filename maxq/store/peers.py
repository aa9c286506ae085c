"""
What differs between a server that owns its database and servers that
share one: the other servers (L{IPeers}), and the transaction primitives
only a shared database has (L{ISharedTransaction}).  Each store exposes its
peers as C{store.peers}; nothing outside L{maxq.store} asks which database
it runs on.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from maxq.store import ITransaction


class ISharedTransaction(ITransaction):
    """
    A transaction on a database other servers may share: it also keeps the
    registry of servers.
    """

    def heartbeat(worker_id, timeout_ms, labels=()):
        """
        Record that C{worker_id} is alive and take the dead servers out of
        the registry; fires with their ids (each reported to one server only).
        """

    def remove_worker(worker_id):
        """
        Take C{worker_id} out of the registry.
        """


class IPeers(Interface):
    """
    The other servers on this server's database, if any.
    """

    shared = Attribute("True when other servers may share the database")

    def heartbeat(worker_id, timeout_ms, labels=()):
        """
        Register C{worker_id} as alive; fires with the ids of the servers
        found lost (no heartbeat for C{timeout_ms}), whose work is to be
        taken back.
        """

    def leave(worker_id):
        """
        Take C{worker_id} out of the registry; fires when done.
        """

    def add_observer(observer):
        """
        Call C{observer(message: dict)} for every notification another
        server sends (see L{ITransaction.notify}).
        """

    def recovery_scope(worker_id):
        """
        The worker ids whose running work a restart of C{worker_id} puts
        back, or None for all of it.
        """


@implementer(IPeers)
class SinglePeers:
    """
    A database one server owns alone: no registry, no notifications, and
    everything still running after a restart was this server's.
    """

    shared = False

    def heartbeat(self, worker_id, timeout_ms, labels=()):
        return defer.succeed([])

    def leave(self, worker_id):
        return defer.succeed(None)

    def add_observer(self, observer) -> None:
        pass

    def recovery_scope(self, worker_id):
        return None


@implementer(IPeers)
class SharedPeers:
    """
    A database several servers may share: the registry is a table written
    by L{ISharedTransaction}s, notifications come through C{store}'s LISTEN,
    and a restart recovers only what ran under its own worker id.
    """

    shared = True

    def __init__(self, store):
        # A PostgresStore: its transactions provide ISharedTransaction and
        # its add_observer hears the other servers.
        self.store = store

    def heartbeat(self, worker_id, timeout_ms, labels=()):
        return self.store.transaction(
            lambda tx: tx.heartbeat(worker_id, timeout_ms, labels))

    def leave(self, worker_id):
        return self.store.transaction(lambda tx: tx.remove_worker(worker_id))

    def add_observer(self, observer) -> None:
        self.store.add_observer(observer)

    def recovery_scope(self, worker_id):
        return [worker_id]
