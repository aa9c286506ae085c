"""
The primitives of schedules and backfills (SPEC §5): the shared schedule
state, runs made for a fire time (one per flow and fire time, by a unique
key), held runs and their release, the schedule log and backfills.
L{maxq.store.sql.SqlTransaction} mixes them in.
"""

from __future__ import annotations

from maxq.store.columns import chunks, encode, where

# Statuses of a run that has not finished.
_OPEN = "('pending', 'running', 'paused')"


class SchedulePrimitives:
    # Where several servers share the database, a backend takes the row with
    # FOR UPDATE SKIP LOCKED: a schedule another server is firing is None.
    LOCK_SCHEDULE = "SELECT * FROM schedules WHERE flow_name = ?"

    # ... and one that waits for it (the end of a run releasing the next).
    WAIT_SCHEDULE = "SELECT * FROM schedules WHERE flow_name = ?"
    WAIT_BACKFILL = "SELECT * FROM backfills WHERE id = ?"

    async def lock_schedule(self, flow_name, wait=False):
        return await self._one("schedules",
                               self.WAIT_SCHEDULE if wait else self.LOCK_SCHEDULE,
                               (flow_name,))

    async def lock_backfill(self, backfill_id):
        return await self._one("backfills", self.WAIT_BACKFILL, (backfill_id,))

    async def insert_schedule(self, row):
        cols = list(row)
        _, rows, _ = await self._execute(
            f"INSERT INTO schedules ({','.join(cols)}) "
            f"VALUES ({','.join('?' * len(cols))}) "
            "ON CONFLICT DO NOTHING RETURNING flow_name",
            [row[c] for c in cols],
        )
        return bool(rows)

    async def get_schedules(self, flow_names=None):
        clause, params = where({"flow_name": flow_names})
        rows = await self._rows("schedules", f"SELECT * FROM schedules{clause}", params)
        return {r["flow_name"]: r for r in rows}

    async def update_schedule(self, flow_name, **columns):
        sets = ", ".join(f"{c} = ?" for c in columns)
        await self._write(f"UPDATE schedules SET {sets} WHERE flow_name = ?",
                          [*columns.values(), flow_name])

    # runs of fire times ---------------------------------------------------

    async def insert_run_once(self, row):
        """
        Insert a run unless its flow already has a scheduled run for its
        fire time (the unique key); fires with True when inserted.
        """
        row = encode("runs", row)
        cols = list(row)
        _, rows, _ = await self._execute(
            f"INSERT INTO runs ({','.join(cols)}) VALUES ({','.join('?' * len(cols))}) "
            "ON CONFLICT DO NOTHING RETURNING id",
            [row[c] for c in cols],
        )
        return bool(rows)

    async def open_scheduled_runs(self, flow_name):
        """
        Fires with C{(started, held)}: how many scheduled runs of the flow
        are unfinished and not held, and how many are held.
        """
        _, rows, _ = await self._execute(
            "SELECT held IS NULL, count(*) FROM runs WHERE flow_name = ? "
            f"AND trigger = 'schedule' AND status IN {_OPEN} GROUP BY held IS NULL",
            (flow_name,),
        )
        counts = {bool(free): n for free, n in rows}
        return counts.get(True, 0), counts.get(False, 0)

    async def held_runs(self, limit, flow_name=None, backfill_id=None):
        """
        The oldest held runs (by fire time) of a flow's schedule or of a
        backfill: rows C{id, scheduled_at}.
        """
        conditions = ({"backfill_id": backfill_id} if backfill_id is not None
                      else {"flow_name": flow_name, "trigger": "schedule"})
        clause, params = where(conditions)
        return await self._rows(
            "runs",
            f"SELECT id, scheduled_at FROM runs{clause} AND held IS NOT NULL "
            "AND status = 'pending' ORDER BY scheduled_at, created_at LIMIT ?",
            [*params, limit],
        )

    async def release_run(self, run_id, now):
        """
        A held run may start: its first flow call is queued.
        """
        await self._write("UPDATE runs SET held = NULL WHERE id = ?", (run_id,))
        await self.insert_flow_call(run_id, None, None, now)

    async def runs_at(self, flow_name, times):
        """
        Fires with C{{fire time: [statuses of its runs, newest last]}} for
        the runs of the flow made for any of C{times}.
        """
        found: dict[int, list[str]] = {}
        for chunk in chunks(list(times)):
            _, rows, _ = await self._execute(
                "SELECT scheduled_at, status FROM runs WHERE flow_name = ? "
                f"AND scheduled_at IN ({','.join('?' * len(chunk))}) "
                "ORDER BY created_at",
                [flow_name, *chunk],
            )
            for at, status in rows:
                found.setdefault(at, []).append(status)
        return found

    # the schedule log -----------------------------------------------------

    async def insert_schedule_log(self, row):
        await self._insert("schedule_log", row)

    async def list_schedule_log(self, flow_name, limit):
        return await self._rows(
            "schedule_log",
            "SELECT * FROM schedule_log WHERE flow_name = ? ORDER BY id DESC LIMIT ?",
            (flow_name, limit),
        )

    # backfills ------------------------------------------------------------

    async def insert_backfill(self, row):
        await self._insert("backfills", row)

    async def get_backfill(self, backfill_id):
        return await self._one("backfills", "SELECT * FROM backfills WHERE id = ?",
                               (backfill_id,))

    async def update_backfill(self, backfill_id, **columns):
        columns = encode("backfills", columns)
        sets = ", ".join(f"{c} = ?" for c in columns)
        await self._write(f"UPDATE backfills SET {sets} WHERE id = ?",
                          [*columns.values(), backfill_id])

    async def list_backfills(self, flow_name, limit):
        return await self._rows(
            "backfills",
            "SELECT * FROM backfills WHERE flow_name = ? "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (flow_name, limit),
        )

    async def backfill_runs(self, backfill_id):
        """
        The backfill's runs: rows C{id, scheduled_at, status, held}, oldest
        fire time first.
        """
        return await self._rows(
            "runs",
            "SELECT id, scheduled_at, status, held FROM runs WHERE backfill_id = ? "
            "ORDER BY scheduled_at, created_at",
            (backfill_id,),
        )

    async def delete_unstarted_run(self, run_id):
        """
        Remove a run that has not started (held, or its first flow call not
        yet claimed); fires with True when it was removed.
        """
        await self.lock_run(run_id)
        _, rows, _ = await self._execute(
            "SELECT id FROM runs WHERE id = ? AND status = 'pending' AND NOT EXISTS "
            "(SELECT 1 FROM flow_calls WHERE run_id = ? AND status != 'pending')",
            (run_id, run_id),
        )
        if not rows:
            return False
        for table in ("flow_calls", "logs"):
            await self._write(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
        await self._write("DELETE FROM runs WHERE id = ?", (run_id,))
        return True
