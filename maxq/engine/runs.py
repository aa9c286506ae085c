"""
The writes driven by requests (create and patch a run, post fields, add a
log line) and the scheduler's claim of due work.

Each C{check_*} validates a request before any transaction; the unit that
follows takes C{(ctx, tx, effects, ...)}.
"""

from __future__ import annotations

import uuid
from typing import Any

from maxq import model
from maxq.engine.queries import run_view
from maxq.engine.unit import log_entry_event, log_event
from maxq.errors import Conflict, flow_not_found, run_not_found, step_not_found_in_run
from maxq.errors import validation_error
from maxq.model import PENDING, RUNNING

MAX_IDEMPOTENCY_KEY = 255


def check_create_run(ctx, flow_name: str, body: Any, idempotency_key: str | None):
    if ctx.flows.flow_script(flow_name) is None:
        raise flow_not_found(flow_name)
    if not isinstance(body, dict):
        raise validation_error("body must be a JSON object")
    unknown = set(body) - {"input", "metadata", "flowName", "name", "description"}
    if unknown:
        raise validation_error("unknown keys in body", keys=sorted(unknown))
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise validation_error("metadata must be an object", field="metadata")
    for key in ("name", "description"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise validation_error(f"{key} must be a string", field=key)
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise validation_error(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )


async def create_run(ctx, tx, effects, flow_name, body, key):
    if key is not None:
        existing = await tx.get_run_by_idempotency_key(key)
        if existing is not None:
            if existing["flow_name"] != flow_name:
                raise Conflict(
                    "IDEMPOTENCY_CONFLICT",
                    "this Idempotency-Key was used for a run of another flow",
                    runId=existing["id"],
                    flowName=existing["flow_name"],
                )
            return await run_view(tx, existing), False
    now = ctx.now()
    run = {
        "id": str(uuid.uuid4()),
        "flow_name": flow_name,
        "status": PENDING,
        "name": body.get("name"),
        "description": body.get("description"),
        "input": body.get("input"),
        "metadata": body.get("metadata"),
        "idempotency_key": key,
        "created_at": now,
    }
    await tx.insert_run(run)
    effects.event("run", run["id"], flow_name, status=PENDING, data={"change": "created"})
    await tx.insert_flow_call(run["id"], None, None, now)
    effects.wake = True
    return await run_view(tx, await tx.get_run(run["id"])), True


def check_patch_run(body: Any):
    if not isinstance(body, dict):
        raise validation_error("body must be a JSON object")
    unknown = set(body) - {"name", "description", "output", "metadata"}
    if unknown:
        raise validation_error(
            "only name, description, output and metadata may be changed",
            keys=sorted(unknown),
        )
    for key in ("name", "description"):
        if key in body and body[key] is not None and not isinstance(body[key], str):
            raise validation_error(f"{key} must be a string", field=key)
    if "metadata" in body and body["metadata"] is not None and not isinstance(
        body["metadata"], dict
    ):
        raise validation_error("metadata must be an object", field="metadata")


async def patch_run(ctx, tx, effects, run_id, body):
    await tx.lock_run(run_id)
    run = await tx.get_run(run_id)
    if run is None:
        raise run_not_found(run_id)
    await tx.update_run(run_id, **body)
    effects.event("run", run_id, run["flow_name"], status=run["status"],
                  data={"change": "updated", "keys": sorted(body)})
    return await run_view(tx, await tx.get_run(run_id))


def check_post_fields(body: Any):
    if not isinstance(body, dict) or not isinstance(body.get("fields"), dict):
        raise validation_error('body must be {"fields": {...}} with an object')
    if set(body) - {"fields"}:
        raise validation_error("unknown keys in body", keys=sorted(set(body) - {"fields"}))


async def post_fields(ctx, tx, effects, run_id, step_id, body):
    await tx.lock_run(run_id)
    if await tx.get_run(run_id) is None:
        raise run_not_found(run_id)
    step = await tx.get_step(run_id, step_id)
    if step is None:
        raise step_not_found_in_run(run_id, step_id)
    fields = {**(step["fields"] or {}), **body["fields"]}
    model.check_fields_size(fields, step_id)
    await tx.update_step(run_id, step_id, fields=fields)
    effects.event("fields", run_id, stage=step["stage"], step_id=step_id,
                  data={"keys": sorted(body["fields"])})
    return {"id": step_id, "runId": run_id, "fields": fields}


def check_add_log(body: Any):
    if not isinstance(body, dict):
        raise validation_error("body must be a JSON object")
    unknown = set(body) - {"entityType", "entityId", "level", "message", "metadata"}
    if unknown:
        raise validation_error("unknown keys in body", keys=sorted(unknown))
    if body.get("entityType") not in model.LOG_ENTITY_TYPES:
        raise validation_error("entityType must be one of "
                               + ", ".join(model.LOG_ENTITY_TYPES), field="entityType")
    if body.get("level") not in model.LOG_LEVELS:
        raise validation_error("level must be one of " + ", ".join(model.LOG_LEVELS),
                               field="level")
    if not isinstance(body.get("message"), str):
        raise validation_error("message is required (a string)", field="message")
    entity_id = body.get("entityId")
    if entity_id is not None and not isinstance(entity_id, str):
        raise validation_error("entityId must be a string", field="entityId")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise validation_error("metadata must be an object", field="metadata")


async def add_log(ctx, tx, effects, run_id, body):
    if await tx.get_run(run_id) is None:
        raise run_not_found(run_id)
    row = {
        "run_id": run_id, "entity_type": body["entityType"],
        "entity_id": body.get("entityId"), "level": body["level"],
        "message": body["message"], "metadata": body.get("metadata"),
        "created_at": ctx.now(),
    }
    row["id"] = await tx.insert_log(row)
    log_entry_event(effects, row)
    return row


async def claim(ctx, tx, effects, worker_id, call_limit, step_limit):
    """
    Claim up to C{call_limit} due flow calls and up to C{step_limit}
    runnable steps for C{worker_id}, in one transaction.
    """
    now = ctx.now()
    calls = await tx.claim_flow_calls(worker_id, now, call_limit)
    for call in calls:
        run = await tx.get_run(call["run_id"])
        if run["status"] == PENDING:
            await tx.update_run(run["id"], status=RUNNING, started_at=now)
            effects.event("run", run["id"], run["flow_name"], status=RUNNING,
                          previous_status=PENDING)
            await log_event(tx, run["id"], "run", run["id"], "info",
                            f"run of {run['flow_name']} started", "run_started", now,
                            effects)
    steps = await tx.claim_steps(worker_id, now, step_limit) if step_limit > 0 else []
    for s in steps:
        effects.event("step", s["run_id"], s.get("flow_name"), stage=s["stage"],
                      step_id=s["id"], status=RUNNING, previous_status=PENDING,
                      data={"attempt": s["retry_count"] + 1,
                            "retryCount": s["retry_count"], "workerId": worker_id})
    return calls, steps
