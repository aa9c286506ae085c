"""
The reads: runs, steps, fields and logs as the API shows them, and what the
database says runs on a server.
"""

from __future__ import annotations

from maxq import model
from maxq.errors import run_not_found, step_not_found_in_run


async def run_view(tx, run: dict) -> dict:
    run = dict(run)
    run["stages"] = await tx.list_stages(run["id"])
    return run


async def _check_run(tx, run_id):
    if await tx.get_run(run_id) is None:
        raise run_not_found(run_id)


async def get_run(ctx, run_id: str) -> dict:
    async def read(tx):
        run = await tx.get_run(run_id)
        if run is None:
            raise run_not_found(run_id)
        return await run_view(tx, run)

    return await ctx.store.read(read)


async def run_finished(ctx, run_id: str) -> bool:
    """
    True when the run is completed or failed (or does not exist).
    """
    run = await ctx.store.read(lambda tx: tx.get_run(run_id))
    return run is None or run["status"] in model.RUN_FINISHED


async def list_runs(ctx, page, **filters):
    async def read(tx):
        return await tx.list_runs(page, **filters)

    return await ctx.store.read(read)


async def list_steps(ctx, run_id, page, **filters):
    async def read(tx):
        await _check_run(tx, run_id)
        return await tx.list_steps(run_id, page, **filters)

    return await ctx.store.read(read)


async def get_step(ctx, run_id: str, step_id: str) -> dict:
    async def read(tx):
        await _check_run(tx, run_id)
        step = await tx.get_step(run_id, step_id)
        if step is None:
            raise step_not_found_in_run(run_id, step_id)
        return step

    return await ctx.store.read(read)


async def get_fields(ctx, run_id: str, step_ids: list[str] | None,
                     field_name: str | None) -> list[dict]:
    async def read(tx):
        await _check_run(tx, run_id)
        return await tx.get_fields(run_id, step_ids)

    rows = await ctx.store.read(read)
    out = []
    for row in rows:
        fields = row["fields"] or {}
        if field_name is not None:
            fields = {field_name: fields[field_name]} if field_name in fields else {}
        out.append({
            "stepId": row["id"], "stepName": row["name"], "stageName": row["stage"],
            "status": row["status"], "fields": fields,
            "completedAt": row["completed_at"],
        })
    return out


async def list_logs(ctx, run_id, page, **filters):
    async def read(tx):
        await _check_run(tx, run_id)
        return await tx.list_logs(run_id, page, **filters)

    return await ctx.store.read(read)


async def running_on(ctx, worker_id: str) -> tuple[list[dict], list[dict]]:
    """
    The steps and flow calls the database says run on C{worker_id}.
    """
    async def read(tx):
        return (await tx.running_steps([worker_id]),
                await tx.running_flow_calls([worker_id]))

    return await ctx.store.read(read)
