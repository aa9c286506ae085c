"""
The primitives over the work a scheduler claims and runs: steps (with their
dependency edges) and flow calls.  L{maxq.store.sql.SqlTransaction} mixes
them in; they call its C{_execute}, C{_rows}, C{_update} and the like.
"""

from __future__ import annotations

from maxq.store.columns import (
    NEXT_FLOW_CALL, RUNNABLE_STEP, STEP_SORT, chunks, order_by, where,
)


def _excluding(sql: str, condition: str, text: str, flows) -> str:
    """
    C{sql} with C{text} (naming C{flows}) added after C{condition}.
    """
    marks = ",".join("?" * len(flows))
    return sql.replace(condition, f"{condition} AND {text.format(marks)}", 1)


class StepPrimitives:
    """
    Steps and their dependency edges, and claiming runnable steps.
    """

    # The column that orders steps by insertion.
    ORDER = "rowid"

    async def insert_steps(self, run_id, rows, edges):
        await self._insert_many("steps", rows)
        await self._insert_many(
            "step_deps",
            [{"run_id": run_id, "step_id": s, "dep_id": d} for s, d in edges],
            suffix=" ON CONFLICT DO NOTHING",
        )

    async def delete_steps(self, run_id, step_ids):
        for chunk in chunks(list(step_ids)):
            marks = ",".join("?" * len(chunk))
            await self._write(
                f"DELETE FROM step_deps WHERE run_id = ? AND step_id IN ({marks})",
                [run_id, *chunk],
            )
            await self._write(
                f"DELETE FROM steps WHERE run_id = ? AND id IN ({marks})", [run_id, *chunk]
            )

    async def get_step(self, run_id, step_id):
        return await self._one(
            "steps", "SELECT * FROM steps WHERE run_id = ? AND id = ?", (run_id, step_id)
        )

    async def get_step_states(self, run_id, step_ids):
        found = {}
        for chunk in chunks(list(step_ids)):
            marks = ",".join("?" * len(chunk))
            _, rows, _ = await self._execute(
                f"SELECT id, stage, status FROM steps WHERE run_id = ? AND id IN ({marks})",
                [run_id, *chunk],
            )
            for sid, stage, status in rows:
                found[sid] = (stage, status)
        return found

    async def update_step(self, run_id, step_id, **columns):
        return await self._update("steps", {"run_id": run_id, "id": step_id}, columns)

    async def update_steps(self, run_id, step_ids, **columns):
        for chunk in chunks(list(step_ids)):
            await self._update("steps", {"run_id": run_id, "id": chunk}, columns)

    async def record_step_pgid(self, run_id, step_id, claim_no, pgid):
        await self._update("steps", {"run_id": run_id, "id": step_id,
                                     "claim_no": claim_no, "status": "running"},
                           {"pgid": pgid})

    async def list_steps(self, run_id, page, stage=None, status=None, name=None):
        return await self._page(
            "steps",
            "run_id, id, stage, name, status, depends_on, retry_count, max_retries, "
            "env, fields, error, exit_code, created_at, queued_at, started_at, "
            "completed_at, duration_ms, worker_id, termination_reason, timeout_seconds, "
            "retry_delay_ms, retry_backoff, pool, pool_slots, priority, requires, "
            "inputs, wait_reason, allowed_failure, continue_on_failure, max_parallel",
            {"run_id": run_id, "stage": stage, "status": status, "name": name},
            order_by(STEP_SORT[page.sort_by], self.ORDER, page.sort_order), page,
        )

    async def steps_with_status(self, run_id, statuses, stage=None):
        clause, params = where({"run_id": run_id, "status": list(statuses),
                                "stage": stage})
        return await self._rows(
            "steps",
            f"SELECT id, stage, name, status, worker_id, claim_no, error, pgid "
            f"FROM steps{clause} ORDER BY {self.ORDER}",
            params,
        )

    async def running_steps(self, worker_ids=None):
        """
        Every running step of every run, or of the workers C{worker_ids}.
        """
        clause, params = where({"status": "running", "worker_id": worker_ids})
        return await self._rows(
            "steps",
            f"SELECT run_id, id, stage, name, status, worker_id, claim_no, "
            f"interruptions, pgid FROM steps{clause} ORDER BY run_id, {self.ORDER}",
            params,
        )

    async def stage_has_unfinished(self, run_id, stage):
        return await self._scalar(
            "SELECT 1 FROM steps WHERE run_id = ? AND stage = ? "
            "AND status IN ('pending', 'running') LIMIT 1",
            (run_id, stage),
        ) is not None

    async def count_stage_steps(self, run_id, stage):
        _, rows, _ = await self._execute(
            "SELECT status, count(*) FROM steps WHERE run_id = ? AND stage = ? "
            "GROUP BY status",
            (run_id, stage),
        )
        return dict(rows)

    async def dependents_of(self, run_id, step_ids):
        found = []
        for chunk in chunks(list(step_ids)):
            marks = ",".join("?" * len(chunk))
            _, rows, _ = await self._execute(
                f"SELECT DISTINCT step_id FROM step_deps "
                f"WHERE run_id = ? AND dep_id IN ({marks})",
                [run_id, *chunk],
            )
            found.extend(r[0] for r in rows)
        return found

    async def release_dependents(self, run_id, step_id):
        await self._write(
            "UPDATE steps SET deps_left = deps_left - 1 WHERE run_id = ? "
            "AND status = 'pending' "
            "AND id IN (SELECT step_id FROM step_deps WHERE run_id = ? AND dep_id = ?)",
            (run_id, run_id, step_id),
        )

    async def recount_dependencies(self, run_id):
        await self._write(
            "UPDATE steps SET deps_left = ("
            " SELECT count(*) FROM step_deps d JOIN steps p"
            " ON p.run_id = d.run_id AND p.id = d.dep_id"
            " WHERE d.run_id = steps.run_id AND d.step_id = steps.id"
            " AND p.status != 'completed' AND p.allowed_failure = 0)"
            " WHERE run_id = ? AND status = 'pending'",
            (run_id,),
        )

    # The backend's claim statement, with parameters (worker_id, now, now,
    # limit), returning the claimed rows and their insertion order as C{seq}.
    CLAIM_STEPS: str

    async def claim_steps(self, worker_id, now, limit, exclude_flows=()):
        """
        The plain claim: steps no limit holds back, and none of the flows
        C{exclude_flows} (those with a step limit: maxq.store.limits).
        """
        sql, params = self.CLAIM_STEPS, [worker_id, now, now, limit]
        if exclude_flows:
            flows = sorted(exclude_flows)
            sql = _excluding(sql, RUNNABLE_STEP, "r.flow_name NOT IN ({})", flows)
            params = [worker_id, now, now, *flows, limit]
        rows = await self._rows("steps", sql, params)
        await self._flow_names(rows)
        rows.sort(key=lambda r: (-r["priority"], r["ready_at"], r["seq"]))
        return rows

    async def get_fields(self, run_id, step_ids):
        params: list = [run_id]
        extra = ""
        if step_ids:
            extra = f" AND id IN ({','.join('?' * len(step_ids))})"
            params.extend(step_ids)
        return await self._rows(
            "steps",
            f"SELECT id, name, stage, status, fields, completed_at FROM steps "
            f"WHERE run_id = ?{extra} ORDER BY {self.ORDER}",
            params,
        )


class FlowCallPrimitives:
    """
    Flow calls (one C{flow.sh} invocation each), and claiming them.
    """

    async def insert_flow_call(self, run_id, completed_stage, failed_stage, now):
        return await self._insert(
            "flow_calls",
            {
                "run_id": run_id,
                "completed_stage": completed_stage,
                "failed_stage": failed_stage,
                "status": "pending",
                "created_at": now,
            },
            returning="id",
        )

    async def get_flow_call(self, call_id):
        return await self._one("flow_calls", "SELECT * FROM flow_calls WHERE id = ?",
                               (call_id,))

    async def update_flow_call(self, call_id, **columns):
        return await self._update("flow_calls", {"id": call_id}, columns)

    async def open_flow_calls(self, run_id):
        return await self._rows(
            "flow_calls",
            "SELECT * FROM flow_calls WHERE run_id = ? "
            "AND status IN ('pending', 'running') ORDER BY id",
            (run_id,),
        )

    async def flow_calls_with_status(self, run_id, statuses):
        clause, params = where({"run_id": run_id, "status": list(statuses)})
        return await self._rows("flow_calls",
                                f"SELECT * FROM flow_calls{clause} ORDER BY id", params)

    async def record_flow_call_pgid(self, call_id, pgid):
        await self._update("flow_calls", {"id": call_id, "status": "running"},
                           {"pgid": pgid})

    async def running_flow_calls(self, worker_ids=None):
        """
        Every running flow call, or those of the workers C{worker_ids}.
        """
        clause, params = where({"status": "running", "worker_id": worker_ids})
        return await self._rows("flow_calls",
                                f"SELECT * FROM flow_calls{clause} ORDER BY id", params)

    # The backend's claim statement, with parameters (worker_id, now,
    # limit), returning the claimed rows.
    CLAIM_FLOW_CALLS: str

    async def claim_flow_calls(self, worker_id, now, limit, exclude_flows=()):
        """
        The plain claim of flow calls; the first call of a pending run of
        C{exclude_flows} (those with maxActiveRuns) is left to the limited
        start of runs (maxq.store.limits).
        """
        sql, params = self.CLAIM_FLOW_CALLS, [worker_id, now, limit]
        if exclude_flows:
            flows = sorted(exclude_flows)
            sql = _excluding(sql, NEXT_FLOW_CALL,
                             "NOT (r.status = 'pending' AND r.flow_name IN ({}))", flows)
            params = [worker_id, now, *flows, limit]
        rows = await self._rows("flow_calls", sql, params)
        await self._flow_names(rows)
        await self._triggers(rows)
        rows.sort(key=lambda r: r["id"])
        return rows

    async def _triggers(self, rows):
        """
        Give each claimed flow call its run's trigger and fire time (what
        flow.sh is told), unless the claim statement returned them.
        """
        ids = list({r["run_id"] for r in rows if "trigger" not in r})
        if not ids:
            return
        _, found, _ = await self._execute(
            f"SELECT id, trigger, scheduled_at FROM runs "
            f"WHERE id IN ({','.join('?' * len(ids))})", ids)
        runs = {run_id: (trigger, at) for run_id, trigger, at in found}
        for row in rows:
            if "trigger" not in row:
                row["trigger"], row["scheduled_at"] = runs[row["run_id"]]
