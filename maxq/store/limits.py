"""
The flow-control primitives (SPEC §6), a mixin of
L{maxq.store.sql.SqlTransaction}: pools, the limited claim's candidates,
the locks and counts it decides on, claiming the steps and first flow calls
it chose, and wait reasons.

Nothing is counted in a counter: what a limit allows is what is running
now, read from the steps and runs, so a lost server's slots come back as
soon as its work is requeued.  On PostgreSQL, candidates are taken with
C{SKIP LOCKED} (never waited for) and the rows of the limits they touch are
then locked in one fixed order (run limits, step limits, pools; each by
name) before counting, so two servers neither take the same last slot nor
deadlock; on SQLite the whole claim is one C{BEGIN IMMEDIATE} transaction.
"""

from __future__ import annotations

from maxq.store.columns import CLAIM_STEP_SET, RUNNABLE_ANY, chunks

# What the claims return of a step (the plain claim returns the same).
CLAIMED_STEP = ("run_id, id, stage, name, env, retry_count, claim_no, timeout_seconds, "
                "ready_at, priority, inputs")


def _marks(items) -> str:
    return ",".join("?" * len(items))


class LimitPrimitives:
    """
    Backends set how candidates and limit rows are locked (nothing to do
    where one transaction holds the whole database).
    """

    # Appended to the candidate SELECTs: lock what is taken, skip the rest.
    LOCK_CANDIDATES = ""
    LOCK_PENDING_RUNS = ""
    # Appended to the SELECT of limit rows (empty: nothing to lock).
    LOCK_LIMITS = ""
    # How steps are joined to their runs with steps the outer loop (SQLite's
    # CROSS JOIN fixes the order; PostgreSQL's planner needs no such help and
    # takes no ON after CROSS JOIN).
    STEPS_FIRST = "CROSS JOIN"

    # pools ----------------------------------------------------------------

    async def list_pools(self):
        _, rows, _ = await self._execute(
            "SELECT p.name, p.slots,"
            " (SELECT coalesce(sum(s.pool_slots), 0) FROM steps s"
            "  WHERE s.status = 'running' AND s.pool = p.name),"
            " (SELECT count(*) FROM steps s WHERE s.status = 'pending'"
            "  AND s.pool = p.name) "
            "FROM pools p ORDER BY p.name")
        return [{"name": n, "slots": s, "used": int(u), "waiting": int(w)}
                for n, s, u, w in rows]

    async def get_pool(self, name):
        pools = await self.list_pools()
        return next((p for p in pools if p["name"] == name), None)

    async def put_pool(self, name, slots):
        await self._write(
            "INSERT INTO pools (name, slots) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET slots = EXCLUDED.slots", (name, slots))

    async def delete_pool(self, name):
        await self._write("DELETE FROM pools WHERE name = ?", (name,))

    async def pool_in_use(self, name):
        """
        True when a step that has not finished names the pool.
        """
        return await self._scalar(
            "SELECT 1 FROM steps WHERE pool = ? AND status IN ('pending', 'running') "
            "LIMIT 1", (name,)) is not None

    async def existing_pools(self, names):
        names = sorted(set(names))
        if not names:
            return set()
        _, rows, _ = await self._execute(
            f"SELECT name FROM pools WHERE name IN ({_marks(names)})", names)
        return {r[0] for r in rows}

    # the limited step claim ---------------------------------------------------

    async def gated_candidates(self, now, limit, limited_flows=()):
        """
        Runnable steps a limit may hold back, in claim order: those marked
        C{gate}, and every step of C{limited_flows} (a limit added to a
        flow.yaml after its steps were scheduled).  Each kind walks its own
        index (one query with an OR would walk every step of the table).
        """
        rows = await self._candidates(now, limit, "c.gate IS NOT NULL", [])
        flows = sorted(limited_flows)
        if flows:
            rows += await self._candidates(
                now, limit, f"c.gate IS NULL AND r.flow_name IN ({_marks(flows)})", flows)
            rows.sort(key=lambda r: (-r["priority"], r["ready_at"], r["seq"]))
        return rows[:limit]

    async def _candidates(self, now, limit, condition, params):
        return await self._rows(
            "steps",
            f"SELECT c.run_id, c.id, c.stage, r.flow_name, c.pool, c.pool_slots, "
            f"c.requires, c.max_parallel, c.priority, c.wait_reason, c.ready_at, "
            f"c.{self.ORDER} AS seq "
            f"FROM steps c {self.STEPS_FIRST} runs r ON r.id = c.run_id "
            f"WHERE {RUNNABLE_ANY} AND {condition} "
            f"ORDER BY c.priority DESC, c.ready_at, c.{self.ORDER} LIMIT ?"
            f"{self.LOCK_CANDIDATES}",
            [now, *params, limit],
        )

    async def gated_pending(self):
        """
        True when some pending step is marked C{gate}, runnable or not.
        """
        return await self._scalar(
            "SELECT 1 FROM steps WHERE status = 'pending' AND gate IS NOT NULL LIMIT 1"
        ) is not None

    async def lock_limits(self, names, pools):
        """
        Lock the limit rows C{names} ("runs/FLOW", "steps/FLOW") and the
        pools C{pools}, in the fixed order.  Held on PostgreSQL: sent in
        front of the next statement (the counts), which runs once they are
        all taken; nothing to do where one transaction holds the database.
        """
        if not self.LOCK_LIMITS:
            return
        names, pools = sorted(set(names)), sorted(set(pools))
        if names:
            await self._write(
                f"INSERT INTO limit_locks (name) VALUES {','.join(['(?)'] * len(names))} "
                f"ON CONFLICT (name) DO NOTHING", names)
            await self._write(
                f"SELECT name FROM limit_locks WHERE name IN ({_marks(names)}) "
                f"ORDER BY name{self.LOCK_LIMITS}", names)
        if pools:
            await self._write(
                f"SELECT name FROM pools WHERE name IN ({_marks(pools)}) "
                f"ORDER BY name{self.LOCK_LIMITS}", pools)

    async def running_counts(self, flows, run_ids, pools):
        """
        What runs now: C{({flow: steps}, {(run_id, stage): steps},
        {pool: slots used}, {pool: slots})}, in one statement.
        """
        parts, params = [], []
        flows, run_ids, pools = sorted(set(flows)), sorted(set(run_ids)), sorted(set(pools))
        if flows:
            parts.append(
                # From the running steps (few) to their runs, never from the
                # flow's runs (all it ever had).
                f"SELECT 'f', r.flow_name, '', count(*) FROM steps s {self.STEPS_FIRST} runs r "
                f"ON r.id = s.run_id WHERE s.status = 'running' "
                f"AND r.flow_name IN ({_marks(flows)}) GROUP BY r.flow_name")
            params += flows
        if run_ids:
            parts.append(
                f"SELECT 's', run_id, stage, count(*) FROM steps WHERE status = 'running' "
                f"AND run_id IN ({_marks(run_ids)}) GROUP BY run_id, stage")
            params += run_ids
        if pools:
            parts.append(
                f"SELECT 'p', pool, '', sum(pool_slots) FROM steps WHERE status = 'running' "
                f"AND pool IN ({_marks(pools)}) GROUP BY pool")
            parts.append(f"SELECT 'q', name, '', slots FROM pools "
                         f"WHERE name IN ({_marks(pools)})")
            params += pools + pools
        found: tuple[dict, dict, dict, dict] = ({}, {}, {}, {})
        if not parts:
            return found
        _, rows, _ = await self._execute(" UNION ALL ".join(parts), params)
        for kind, name, stage, n in rows:
            if kind == "f":
                found[0][name] = int(n)
            elif kind == "s":
                found[1][(name, stage)] = int(n)
            elif kind == "p":
                found[2][name] = int(n)
            else:
                found[3][name] = int(n)
        return found

    async def claim_listed_steps(self, worker_id, now, keys):
        """
        Claim the steps C{keys} (C{(run_id, step_id)}, locked or chosen in
        this transaction) for C{worker_id}.
        """
        claimed = []
        for chunk in chunks(list(keys), 200):
            cond = " OR ".join(["(run_id = ? AND id = ?)"] * len(chunk))
            claimed += await self._rows(
                "steps",
                f"UPDATE steps SET {CLAIM_STEP_SET}, wait_reason = NULL "
                f"WHERE status = 'pending' AND ({cond}) "
                f"RETURNING {CLAIMED_STEP}, {self.ORDER} AS seq",
                [worker_id, now, *[v for key in chunk for v in key]])
        await self._flow_names(claimed)
        return claimed

    async def set_step_waits(self, waits):
        """
        Record C{{(run_id, step_id): wait reason or None}} (callers pass
        only the changed ones).
        """
        for (run_id, step_id), reason in waits.items():
            await self._update("steps", {"run_id": run_id, "id": step_id},
                               {"wait_reason": reason})

    async def set_run_waits(self, waits):
        for run_id, reason in waits.items():
            await self._update("runs", {"id": run_id}, {"wait_reason": reason})

    async def live_worker_labels(self):
        """
        The labels of every live server sharing the database (none where
        one server owns it).
        """
        return []

    # the limited start of runs -------------------------------------------------

    async def pending_runs_of(self, flows, limit):
        """
        Pending runs of C{flows}, in start order (priority, then age).
        """
        flows = sorted(set(flows))
        return await self._rows(
            "runs",
            f"SELECT r.id, r.flow_name, r.priority, r.created_at, r.wait_reason "
            f"FROM runs r WHERE r.status = 'pending' AND r.flow_name IN ({_marks(flows)}) "
            f"ORDER BY r.priority DESC, r.created_at, r.id LIMIT ?{self.LOCK_PENDING_RUNS}",
            [*flows, limit])

    async def running_runs_of(self, flows):
        flows = sorted(set(flows))
        _, rows, _ = await self._execute(
            f"SELECT flow_name, count(*) FROM runs WHERE status = 'running' "
            f"AND flow_name IN ({_marks(flows)}) GROUP BY flow_name", flows)
        return {name: int(n) for name, n in rows}

    async def claim_first_calls(self, worker_id, now, run_ids):
        """
        Claim the pending flow call of each pending run C{run_ids} (its first).
        """
        run_ids = list(run_ids)
        if not run_ids:
            return []
        rows = await self._rows(
            "flow_calls",
            f"UPDATE flow_calls SET status = 'running', worker_id = ?, started_at = ? "
            f"WHERE status = 'pending' AND run_id IN ({_marks(run_ids)}) RETURNING *",
            [worker_id, now, *run_ids])
        await self._flow_names(rows)
        return rows

    async def count_allowed_failures(self, run_id, stage):
        return await self._scalar(
            "SELECT count(*) FROM steps WHERE run_id = ? AND stage = ? "
            "AND status = 'failed' AND allowed_failure = 1", (run_id, stage))

    # inputs ---------------------------------------------------------------------

    async def ancestors(self, run_id, step_ids):
        """
        Every step the steps C{step_ids} depend on, directly or transitively.
        """
        seen: set[str] = set()
        frontier = list(step_ids)
        while frontier:
            found = []
            for chunk in chunks(frontier):
                _, rows, _ = await self._execute(
                    f"SELECT DISTINCT dep_id FROM step_deps WHERE run_id = ? "
                    f"AND step_id IN ({_marks(chunk)})", [run_id, *chunk])
                found += [r[0] for r in rows if r[0] not in seen]
            seen.update(found)
            frontier = list(set(found))
        return seen
