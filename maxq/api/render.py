"""
Rows as the API shows them (SPEC §3): the one place a store row becomes
JSON.  Step env is masked here.
"""

from __future__ import annotations

from maxq import secrets


def _duration(row: dict) -> int | None:
    if row.get("started_at") is not None and row.get("completed_at") is not None:
        return row["completed_at"] - row["started_at"]
    return None


def render_run(row: dict, full: bool = True) -> dict:
    out = {
        "id": row["id"],
        "flowName": row["flow_name"],
        "status": row["status"],
        "name": row.get("name"),
        "description": row.get("description"),
        "input": row.get("input"),
        "output": row.get("output"),
        "error": row.get("error"),
        "metadata": row.get("metadata"),
        "terminationReason": row.get("termination_reason"),
        "createdAt": row["created_at"],
        "startedAt": row.get("started_at"),
        "completedAt": row.get("completed_at"),
        "durationMs": _duration(row),
        "trigger": row.get("trigger") or "api",
        "scheduledAt": row.get("scheduled_at"),
        "priority": row.get("priority", 0),
        "waitReason": row.get("wait_reason") if row["status"] == "pending" else None,
    }
    if full:
        out["stdout"] = row.get("stdout", "")
        out["stderr"] = row.get("stderr", "")
    if "stages" in row:
        out["stages"] = [
            {
                "name": s["name"],
                "status": s["status"],
                "final": bool(s["final"]),
                "failFast": bool(s["fail_fast"]),
                "createdAt": s["created_at"],
                "completedAt": s["completed_at"],
            }
            for s in row["stages"]
        ]
    return out


def render_step(row: dict, full: bool = True) -> dict:
    out = {
        "id": row["id"],
        "runId": row["run_id"],
        "stage": row["stage"],
        "name": row["name"],
        "status": row["status"],
        "dependsOn": row["depends_on"],
        "retryCount": row["retry_count"],
        "maxRetries": row["max_retries"],
        "retryDelayMs": row["retry_delay_ms"],
        "retryBackoff": row["retry_backoff"],
        "timeoutSeconds": row["timeout_seconds"],
        "env": secrets.mask_env(row["env"]),
        "fields": row["fields"],
        "error": row["error"],
        "exitCode": row["exit_code"],
        "createdAt": row["created_at"],
        "queuedAt": row["queued_at"],
        "startedAt": row["started_at"],
        "completedAt": row["completed_at"],
        "durationMs": row["duration_ms"],
        "workerId": row["worker_id"],
        "terminationReason": row["termination_reason"],
        # Flow control (SPEC §6).
        "pool": row.get("pool"),
        "poolSlots": row.get("pool_slots", 1),
        "priority": row.get("priority", 0),
        "requires": row.get("requires") or [],
        "inputs": row.get("inputs") or {},
        "continueOnFailure": bool(row.get("continue_on_failure")),
        "maxParallel": row.get("max_parallel"),
        "waitReason": row.get("wait_reason") if row["status"] == "pending" else None,
        "allowedFailure": bool(row.get("allowed_failure")),
    }
    if full:
        out["stdout"] = row.get("stdout") or ""
        out["stderr"] = row.get("stderr") or ""
    return out


def render_log(row: dict) -> dict:
    return {
        "id": row["id"],
        "runId": row["run_id"],
        "entityType": row["entity_type"],
        "entityId": row["entity_id"],
        "level": row["level"],
        "message": row["message"],
        "metadata": row["metadata"],
        "createdAt": row["created_at"],
    }
