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
    def list_runs(page, flow_name=None, status=None):
        """
        One L{maxq.model.Page} of runs; fires with C{(rows, total)}.
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
    def list_steps(run_id, page, stage=None, status=None, name=None): ...
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

    def claim_steps(worker_id, now, limit, exclude_flows=()):
        """
        Atomically mark up to C{limit} runnable steps no limit holds back
        (none of C{exclude_flows}) running for C{worker_id}; fires with the
        claimed rows joined with their run's flow name.
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

    def claim_flow_calls(worker_id, now, limit, exclude_flows=()):
        """
        Atomically start the oldest pending call of runs that have none
        running (but not of pending runs of C{exclude_flows}); fires with
        the claimed rows joined with the flow name.
        """

    # flow control (maxq.store.limits)
    def list_pools(): ...
    def get_pool(name): ...
    def put_pool(name, slots): ...
    def delete_pool(name): ...
    def pool_in_use(name): ...
    def existing_pools(names): ...
    def gated_candidates(now, limit, limited_flows=()):
        """
        Fires with runnable steps a limit may hold back, in claim order,
        locked (skipping those locked elsewhere) where servers share.
        """

    def gated_pending(): ...
    def lock_limits(names, pools):
        """
        Lock the limit rows and pools in the fixed order (before the next
        statement runs).
        """

    def running_counts(flows, run_ids, pools): ...
    def claim_listed_steps(worker_id, now, keys): ...
    def set_step_waits(waits): ...
    def set_run_waits(waits): ...
    def live_worker_labels(): ...
    def pending_runs_of(flows, limit): ...
    def running_runs_of(flows): ...
    def claim_first_calls(worker_id, now, run_ids): ...
    def count_allowed_failures(run_id, stage): ...
    def ancestors(run_id, step_ids): ...

    # logs
    def insert_log(row): ...
    def list_logs(run_id, page, entity_type=None, entity_id=None, level=None):
        """
        Newest first; the page's sort is not used.
        """

    # schedules and backfills (maxq/store/schedules.py)
    def lock_schedule(flow_name, wait=False):
        """
        The flow's schedule row, locked for this transaction; None when it
        does not exist or (several servers, unless C{wait}) another
        transaction holds it.
        """

    def lock_backfill(backfill_id):
        """
        The backfill's row, locked for this transaction (waiting for it).
        """

    def insert_schedule(row):
        """
        Fires with True when inserted, False when the row exists.
        """

    def get_schedules(flow_names=None):
        """
        Fires with C{{flow_name: row}}.
        """

    def update_schedule(flow_name, **columns): ...
    def insert_run_once(row):
        """
        Insert a run unless its flow has a scheduled run for its fire time;
        fires with True when inserted.
        """

    def open_scheduled_runs(flow_name):
        """
        Fires with C{(unfinished and not held, held)} scheduled runs.
        """

    def held_runs(limit, flow_name=None, backfill_id=None): ...
    def release_run(run_id, now): ...
    def runs_at(flow_name, times):
        """
        Fires with C{{fire time: [statuses]}} of the flow's runs for them.
        """

    def insert_schedule_log(row): ...
    def list_schedule_log(flow_name, limit): ...
    def insert_backfill(row): ...
    def get_backfill(backfill_id): ...
    def update_backfill(backfill_id, **columns): ...
    def list_backfills(flow_name, limit): ...
    def backfill_runs(backfill_id): ...
    def delete_unstarted_run(run_id):
        """
        Remove a run not yet started; fires with True when removed.
        """

    # operations: the notification outbox, SLA marks, figures
    # (maxq.store.operations documents each)
    def insert_deliveries(rows): ...
    def lease_deliveries(worker_id, now, lease_until, limit): ...
    def record_attempt(delivery_id, worker_id, now, status_code, error, status,
                       next_attempt_at): ...
    def release_leases(worker_ids): ...
    def get_delivery(delivery_id): ...
    def run_deliveries(run_id): ...
    def requeue_delivery(delivery_id, now): ...
    def next_delivery_due(): ...
    def unfinished_runs_started(flow_names, started_before): ...
    def mark_sla_missed(run_id, now): ...
    def live_servers(live_after): ...
    def cluster_figures(now, live_after): ...

    # events, output and search (SPEC §7; maxq/store/history.py)
    def insert_events(events):
        """
        Append the unit's events in order.
        """

    def list_events(after, run_id, flow_name, types, limit, upto=None): ...
    def event_probe(settled):
        """
        Fires with an L{maxq.store.history.EventProbe}: what moves the
        settled bound of L{maxq.streams.EventHub} past C{settled}.
        """

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
