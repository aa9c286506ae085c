"""
The PostgreSQL backend, through txpostgres (psycopg2's asynchronous mode,
no threads).

Several MaxQ servers may share one database; PostgreSQL is what
coordinates them:

- claims are single statements with C{FOR UPDATE SKIP LOCKED}, so servers
  never wait on each other and no step or flow call is claimed twice;
- every transaction that changes a run first locks the run's row
  (L{PostgresTransaction.lock_run}), so the decisions that must happen once
  (a stage ends, a callback is queued, a run completes) are taken by exactly
  one transaction even when a run's last two steps finish on two servers in
  the same millisecond;
- C{NOTIFY maxq} wakes the other servers' schedulers and carries abort and
  pause orders to whichever server runs the processes; a lost notification
  costs only latency, since every server still polls.  A server that is the
  only one registered sends none (decided in SQL, in the transaction that
  would send it: see L{PostgresTransaction.notify}).

Round trips are what a transaction costs here (the server's reactor does
the Python work of each), so a transaction sends as few as it can, each one
simple query that may carry several statements (psycopg2 interpolates
parameters on the client):

- C{BEGIN} travels with the transaction's first statement that writes or
  locks; plain reads before it run on their own, which under READ COMMITTED
  (every statement takes a fresh snapshot, plain reads take no row locks)
  is exactly what they would see inside the transaction; a transaction
  that only reads sends neither C{BEGIN} nor C{COMMIT};
- writes whose result nobody reads (the shared primitives' C{_write}:
  updates, deletes, inserts without C{RETURNING}; and C{lock_run},
  C{NOTIFY}) are held and sent, in order, in front of the next
  statement whose result is needed, or with the C{COMMIT}.  Their errors
  (a unique violation, a deadlock) therefore surface one call later, still
  inside the transaction, which is rolled back and retried as before.  The
  C{update_*} primitives return None here, not a row count.

- a statement used more than once is prepared on each connection (parsed
  and planned once, then sent as C{EXECUTE}); a PREPARE that fails, or a
  plan made stale by a migration, drops the connection's prepared
  statements and runs the unit again.

txpostgres does not reconnect by itself: each pooled connection and the
LISTEN connection carry a C{DeadConnectionDetector}, and LISTEN is issued
again after every reconnection.  While the database is away, calls fail at
once with L{StoreUnavailable} (the API answers 503).  A deadlock or a
serialization failure is not a lost connection: the unit is run again.
The pooled connections run their statements through a lean path of their
own (L{_PooledConnection.query}): the socket stays watched by the reactor
and a result is delivered as soon as it is read, without txpostgres'
per-query cursor wrapper, lock and extra reactor turn.  The pool opens
more connections (up to L{POOL_MAX}) while units queue for one: a unit
waiting for a run's lock holds its connection meanwhile.
"""

from maxq.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
