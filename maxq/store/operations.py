"""
The primitives of operations (SPEC §8), a mixin of L{SqlTransaction}: the
notification outbox (deliveries, their leases and attempts), the SLA marks
on runs, and the whole database's figures for the metrics.

A backend whose due deliveries may be taken by several servers sets
C{LEASE_LOCK} (PostgreSQL: C{FOR UPDATE SKIP LOCKED}); the lease itself
(C{lease_owner}, C{lease_until}) keeps a delivery one server's while it is
sent, and lets another take it when that server died.
"""

from __future__ import annotations

from maxq.store.columns import chunks

DELIVERY_COLUMNS = (
    "id", "run_id", "url", "type", "secret_env", "payload", "status", "attempts",
    "last_status_code", "last_error", "next_attempt_at", "delivered_at",
    "lease_owner", "lease_until", "created_at",
)
_SELECT = ", ".join(DELIVERY_COLUMNS)
RUN_STATUSES = ("pending", "running", "completed", "failed")
STEP_STATUSES = ("pending", "running", "completed", "failed", "cancelled")


class OperationsPrimitives:
    """
    Deliveries, SLA marks and figures; statements with C{?} placeholders.
    """

    # What the due-deliveries subquery adds to skip rows another server is
    # taking (PostgreSQL); nothing where one process owns the database.
    LEASE_LOCK = ""
    # Whether the database has a registry of servers (the workers table).
    HAS_REGISTRY = False

    async def _deliveries(self, sql: str, params=()) -> list[dict]:
        columns, rows, _ = await self._execute(sql, params)
        return [dict(zip(columns, row)) for row in rows]

    # ------------------------------------------------------------ deliveries

    async def insert_deliveries(self, rows):
        """
        Queue deliveries (dicts of L{DELIVERY_COLUMNS} without the attempt
        state); each is due at its C{next_attempt_at}.
        """
        for row in rows:
            await self._write(
                "INSERT INTO notifications (id, run_id, url, type, secret_env, payload, "
                "status, attempts, next_attempt_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
                (row["id"], row["run_id"], row["url"], row["type"], row["secret_env"],
                 row["payload"], row["next_attempt_at"], row["created_at"]),
            )

    async def lease_deliveries(self, worker_id, now, lease_until, limit):
        """
        Take up to C{limit} due deliveries nobody holds (or whose holder's
        lease ran out) for C{worker_id} until C{lease_until}; fires with
        the rows.
        """
        return await self._deliveries(
            f"UPDATE notifications SET lease_owner = ?, lease_until = ? "
            f"WHERE id IN (SELECT id FROM notifications WHERE status = 'pending' "
            f"AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?) "
            f"ORDER BY next_attempt_at LIMIT ?{self.LEASE_LOCK}) RETURNING {_SELECT}",
            (worker_id, lease_until, now, now, limit),
        )

    async def record_attempt(self, delivery_id, worker_id, now, status_code, error,
                             status, next_attempt_at):
        """
        Record one attempt of a delivery this worker holds, and what comes
        next (C{status}: pending with C{next_attempt_at}, delivered or
        failed); releases the lease.  Fires with False when the lease was
        lost meanwhile (nothing is recorded).
        """
        rows = await self._deliveries(
            "UPDATE notifications SET attempts = attempts + 1, last_status_code = ?, "
            "last_error = ?, status = ?, next_attempt_at = ?, "
            "delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END, "
            "lease_owner = NULL, lease_until = NULL "
            "WHERE id = ? AND lease_owner = ? RETURNING id, attempts",
            (status_code, error, status, next_attempt_at, status, now, delivery_id,
             worker_id),
        )
        if not rows:
            return False
        await self._write(
            "INSERT INTO notification_attempts (notification_id, attempt, attempted_at, "
            "status_code, error, worker_id) VALUES (?, ?, ?, ?, ?, ?)",
            (delivery_id, rows[0]["attempts"], now, status_code, error, worker_id),
        )
        return True

    async def release_leases(self, worker_ids):
        """
        Let go of the leases of C{worker_ids} (None: every lease): at a
        start, what a crashed predecessor held is due again at once
        instead of when its lease runs out.
        """
        params: list = []
        extra = ""
        if worker_ids is not None:
            extra = f" AND lease_owner IN ({','.join('?' * len(worker_ids))})"
            params.extend(worker_ids)
        await self._write(
            "UPDATE notifications SET lease_owner = NULL, lease_until = NULL "
            f"WHERE status = 'pending' AND lease_owner IS NOT NULL{extra}", params)

    async def get_delivery(self, delivery_id):
        rows = await self._deliveries(
            f"SELECT {_SELECT} FROM notifications WHERE id = ?", (delivery_id,))
        return rows[0] if rows else None

    async def run_deliveries(self, run_id):
        """
        Fires with the run's deliveries, oldest first.
        """
        return await self._deliveries(
            f"SELECT {_SELECT} FROM notifications WHERE run_id = ? "
            "ORDER BY created_at, id", (run_id,))

    async def requeue_delivery(self, delivery_id, now):
        """
        Make a delivery due now again, whatever became of it (the lease is
        dropped: an attempt under way records nothing).
        """
        await self._write(
            "UPDATE notifications SET status = 'pending', next_attempt_at = ?, "
            "lease_owner = NULL, lease_until = NULL WHERE id = ?", (now, delivery_id))

    async def next_delivery_due(self):
        """
        Fires with when the next pending delivery may be taken (its due time,
        or its lease's end if later), or None.
        """
        _, rows, _ = await self._execute(
            "SELECT min(CASE WHEN lease_until IS NOT NULL AND lease_until > "
            "next_attempt_at THEN lease_until ELSE next_attempt_at END) "
            "FROM notifications WHERE status = 'pending'")
        return rows[0][0] if rows else None

    # ------------------------------------------------------------------- SLA

    async def unfinished_runs_started(self, flow_names, started_before):
        """
        Fires with C{(id, flow_name, started_at)} of the unfinished runs of
        C{flow_names} started before C{started_before} (None: any time)
        whose SLA miss is not recorded yet.
        """
        found = []
        for chunk in chunks(list(flow_names)):
            marks = ",".join("?" * len(chunk))
            params = list(chunk)
            extra = ""
            if started_before is not None:
                extra = " AND started_at < ?"
                params.append(started_before)
            _, rows, _ = await self._execute(
                f"SELECT id, flow_name, started_at FROM runs WHERE flow_name IN ({marks})"
                f" AND status IN ('pending', 'running') AND sla_missed_at IS NULL"
                f" AND started_at IS NOT NULL{extra}", params)
            found.extend(tuple(r) for r in rows)
        return found

    async def mark_sla_missed(self, run_id, now):
        """
        Record the run's SLA miss, once: fires with True for the one
        transaction that recorded it, False when already recorded or the
        run has ended.
        """
        rows = await self._deliveries(
            "UPDATE runs SET sla_missed_at = ? WHERE id = ? AND sla_missed_at IS NULL "
            "AND status IN ('pending', 'running') RETURNING id", (now, run_id))
        return bool(rows)

    # --------------------------------------------------------------- figures

    async def live_servers(self, live_after):
        """
        Fires with how many servers heartbeat after C{live_after} (1 where
        the database has no registry: this one).
        """
        if not self.HAS_REGISTRY:
            return 1
        _, live, _ = await self._execute(
            "SELECT count(*) FROM workers WHERE heartbeat_at > ?", (live_after,))
        return live[0][0]

    async def cluster_figures(self, now, live_after):
        """
        The whole database at a glance: C{{"runs": {status: n}, "steps":
        {status: n}, "oldestPendingMs": age of the oldest runnable pending
        step (0 when none), "servers": live servers (heartbeat after
        C{live_after}; 1 where the database has no registry)}}.
        """
        _, runs, _ = await self._execute(
            "SELECT status, count(*) FROM runs GROUP BY status")
        _, steps, _ = await self._execute(
            "SELECT status, count(*) FROM steps GROUP BY status")
        _, oldest, _ = await self._execute(
            "SELECT min(ready_at) FROM steps WHERE status = 'pending' AND deps_left = 0 "
            "AND ready_at <= ?", (now,))
        servers = await self.live_servers(live_after)
        first = oldest[0][0] if oldest else None
        return {
            "runs": {s: n for s, n in runs},
            "steps": {s: n for s, n in steps},
            "oldestPendingMs": max(0, now - first) if first is not None else 0,
            "servers": servers,
        }
