"""
Where MaxQ keeps its state, behind one interface with a backend per
database.  The engine writes its rules once, as coroutines over an
L{ITransaction}; each backend makes those transactions atomic its own way.
What differs between one server and several is the store's C{peers}
(L{maxq.store.peers.IPeers}).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IStore(Interface):
    """
    A MaxQ database.  Every method returns a Deferred.
    """

    backend = Attribute("'sqlite' or 'postgres', for messages: decide on peers instead")
    schema_version = Attribute("the schema version, once started")
    peers = Attribute("the other servers on this database: an IPeers")

    def start():
        """
        Connect and migrate; fires when the store is ready.
        """

    def stop():
        """
        Close connections; fires when closed.
        """

    def ping():
        """
        Fires with True when the database answers, False otherwise.
        """

    def transaction(fn, *args, **kwargs):
        """
        Run C{await fn(tx, *args, **kwargs)} atomically, with C{tx} an
        L{ITransaction}; commit when it returns, roll back when it raises.
        Fires with its result.  C{fn} must await nothing but C{tx}.
        """

    def read(fn, *args, **kwargs):
        """
        Like L{transaction} for functions that only read.
        """


class ITransaction(Interface):
    """
    The primitives of one unit of work.  Each method is a coroutine.  Rows
    are dicts keyed by column name, with JSON columns decoded.
    """

    # coordination between servers sharing a database
    def lock_run(run_id):
        """
        Serialise this transaction with every other one that changes the
        run (a no-op where one process owns the database).
        """

    def notify(payload):
        """
        Send C{payload} to the other servers when this transaction commits.
        """

    # runs
    def insert_run(row): ...
    def get_run(run_id): ...
    def get_run_by_idempotency_key(key): ...
    def update_run(run_id, **columns): ...
    def list_runs(flow_name, status, sort_by, sort_order, limit, offset):
        """
        Fires with C{(rows, total)}.
        """

    # stages
    def insert_stage(row): ...
    def get_stage(run_id, name): ...
    def list_stages(run_id): ...
    def update_stage(run_id, name, **columns): ...
    def last_completed_stage(run_id): ...
    def count_unfinished_stages(run_id): ...

    # steps
    def insert_steps(run_id, rows, edges):
        """
        Insert step rows and C{(step_id, dep_id)} dependency edges.
        """

    def delete_steps(run_id, step_ids): ...
    def get_step(run_id, step_id): ...
    def get_step_states(run_id, step_ids):
        """
        Fires with C{{id: (stage, status)}} for the ids that exist.
        """

    def update_step(run_id, step_id, **columns): ...
    def record_step_pgid(run_id, step_id, claim_no, pgid):
        """
        Remember a step's process group, if attempt C{claim_no} still runs.
        """

    def record_flow_call_pgid(call_id, pgid):
        """
        Remember a flow call's process group, if it still runs.
        """

    def update_steps(run_id, step_ids, **columns): ...
    def list_steps(run_id, stage, status, name, sort_by, sort_order, limit, offset): ...
    def steps_with_status(run_id, statuses, stage=None):
        """
        Fires with rows (id, stage, status, worker_id, claim_no, error).
        """

    def stage_has_unfinished(run_id, stage):
        """
        Fires with True while a step of the stage is pending or running.
        """

    def count_stage_steps(run_id, stage):
        """
        Fires with C{{status: count}} for one stage.
        """

    def dependents_of(run_id, step_ids):
        """
        Fires with the ids of steps that depend directly on any of C{step_ids}.
        """

    def release_dependents(run_id, step_id):
        """
        One dependency of each step that depends on C{step_id} is now done.
        """

    def recount_dependencies(run_id):
        """
        Recompute the unfinished-dependency count of the run's pending steps.
        """

    def claim_steps(worker_id, now, limit):
        """
        Atomically mark up to C{limit} runnable steps running for
        C{worker_id}; fires with the claimed rows joined with their run's
        flow name.
        """

    def get_fields(run_id, step_ids): ...

    def running_steps(worker_ids=None):
        """
        Fires with every running step (C{run_id, id, stage, name, status,
        worker_id, claim_no, interruptions, pgid}) of any run, or only those
        claimed by one of C{worker_ids}; for recovery after a crash.
        """

    # flow invocations
    def insert_flow_call(run_id, completed_stage, failed_stage, now): ...
    def get_flow_call(call_id): ...
    def update_flow_call(call_id, **columns): ...
    def open_flow_calls(run_id):
        """
        Fires with the run's pending and running flow calls, oldest first.
        """

    def flow_calls_with_status(run_id, statuses): ...
    def running_flow_calls(worker_ids=None):
        """
        Fires with every running flow call, or those of C{worker_ids}.
        """

    def claim_flow_calls(worker_id, now, limit):
        """
        Atomically start the oldest pending call of runs that have none
        running; fires with the claimed rows joined with the flow name.
        """

    # logs
    def insert_log(row): ...
    def list_logs(run_id, entity_type, entity_id, level, limit, offset): ...

    # events, output and search (SPEC §7; maxq/store/history.py)
    def insert_events(events):
        """
        Append the unit's events in order, ids in commit order.
        """

    def list_events(after, run_id, flow_name, types, limit): ...
    def event_bounds():
        """
        Fires with C{(last id, highest pruned id)}.
        """

    def prune_events(before_ms, limit): ...
    def append_output(streams, pieces): ...
    def list_outputs(run_id, step_id, stream): ...
    def read_output(run_id, step_id, stream, claim_no, start, end): ...
    def search_logs(words, run_id, flow_name, limit): ...
    def search_output(words, run_id, flow_name, limit): ...


def open_store(config, reactor) -> IStore:
    """
    The store C{config} selects.  Backends are imported here, lazily, so
    that nothing imports a database driver it does not use.
    """
    if config.backend == "postgres":
        from maxq.store.postgres import PostgresStore

        return PostgresStore(config.database_url, reactor)
    from maxq.store.sqlite import SqliteStore

    return SqliteStore(config.sqlite_path, reactor)


async def migrate(config, reactor) -> int:
    """
    Apply the migrations alone (C{maxq migrate}); returns the schema version.
    """
    store = open_store(config, reactor)
    await store.start()
    try:
        return store.schema_version
    finally:
        await store.stop()
