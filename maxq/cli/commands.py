"""
The client commands (C{flows}, C{run}, C{runs}, C{show}, C{logs},
C{notifications} and the run actions): each calls the API through a L{Client} and prints what it answers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

from twisted.internet import task

from maxq.cli import schedules
from maxq.cli.client import ApiFailure, Client, Unreachable, api_key, server_url
from maxq.cli.exits import EXIT_ERROR, EXIT_OK, EXIT_RUN_FAILED, EXIT_UNREACHABLE
from maxq.cli.watch import cmd_events, cmd_output, cmd_run_follow, cmd_search
from maxq.cli.render import (
    format_duration, format_table, format_time, format_value, format_wait, print_fields,
    print_json,
)

POLL_INTERVAL = 0.1
TERMINAL = ("completed", "failed")


async def run_client_command(reactor, args: argparse.Namespace) -> None:
    """
    Run one client command; turn failures into a message and an exit status.
    """
    client = Client(reactor, server_url(args), api_key())
    try:
        handler = CLIENT_COMMANDS[args.command]
        code = await handler(client, args)
    except ApiFailure as e:
        print(f"error: {e.message} ({e.code})", file=sys.stderr)
        code = EXIT_ERROR
    except Unreachable as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_UNREACHABLE
    finally:
        await client.close()
    if code:
        raise SystemExit(code)


def _q(segment: str) -> str:
    """
    Quote a user-given id as one path segment, so that it cannot reach
    another route.
    """
    return quote(segment, safe="")


def _print_listing(args, body: dict, key: str, headers: list[str], row) -> list:
    """
    Print a listing: the body as JSON with C{--json}, "no <key>" when it is
    empty, else a table of C{row(item)}.  Returns the items a table showed.
    """
    if args.json:
        print_json(body)
        return []
    items = body.get(key, [])
    if not items:
        print(f"no {key}")
        return []
    print(format_table(headers, [row(item) for item in items]))
    return items


async def cmd_flows(client: Client, args) -> int:
    body = await client.request("GET", "/flows")
    _print_listing(args, body, "flows", ["name", "steps", "schedule", "title"],
                   lambda f: (f.get("name"), ", ".join(f.get("steps") or []) or "-",
                              f.get("schedule"), f.get("title")))
    return EXIT_OK
    flows = body.get("flows", [])
    if not flows:
        print("no flows")
        return EXIT_OK
    print(format_table(
        ["name", "steps", "schedule", "title"],
        [(f.get("name"), ", ".join(f.get("steps") or []) or "-",
          f.get("schedule"), f.get("title")) for f in flows],
    ))
    return EXIT_OK


async def cmd_run(client: Client, args) -> int:
    body: dict[str, Any] = {}
    if args.input is not None:
        body["input"] = args.input
    if args.metadata is not None:
        body["metadata"] = args.metadata
    if args.priority is not None:
        body["priority"] = args.priority
    headers = {}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    run = await client.request("POST", f"/flows/{_q(args.flow)}/runs", body,
                               headers=headers)
    run_id = run["id"]
    if not args.wait:
        if args.json:
            print_json(run)
        else:
            print(run_id)
        return EXIT_OK
    if not args.json:
        print(run_id, flush=True)
    if getattr(args, "follow", False) and not args.json:
        return await cmd_run_follow(client, run_id)
    run = await wait_for_run(client, run_id, args.timeout)
    if run is None:
        print(f"error: run {run_id} did not finish within {args.timeout:g}s",
              file=sys.stderr)
        return EXIT_RUN_FAILED
    if args.json:
        print_json(run)
    else:
        print(run["status"])
        if run["status"] != "completed" and run.get("error") is not None:
            print(f"error: {format_value(run['error'])}", file=sys.stderr)
    return EXIT_OK if run["status"] == "completed" else EXIT_RUN_FAILED


async def wait_for_run(client: Client, run_id: str,
                       timeout: float | None) -> dict | None:
    """
    Poll the run until it is completed or failed; C{None} on timeout.
    """
    deadline = None if timeout is None else client.reactor.seconds() + timeout
    while True:
        run = await client.request("GET", f"/runs/{_q(run_id)}")
        if run.get("status") in TERMINAL:
            return run
        if deadline is not None and client.reactor.seconds() >= deadline:
            return None
        await task.deferLater(client.reactor, POLL_INTERVAL, lambda: None)


async def cmd_runs(client: Client, args) -> int:
    body = await client.request("GET", "/runs", params={
        "status": args.status, "flowName": args.flow, "limit": args.limit,
    })
    runs = _print_listing(
        args, body, "runs", ["id", "flow", "status", "created", "duration"],
        lambda r: (r.get("id"), r.get("flowName"), r.get("status"),
                   format_time(r.get("createdAt")),
                   format_duration(r.get("startedAt"), r.get("completedAt"),
                                   r.get("durationMs"))),
    )
    pagination = body.get("pagination") or {}
    total = pagination.get("total")
    if runs and isinstance(total, int) and total > len(runs):
        about = "about " if pagination.get("estimated") else ""
        print(f"({len(runs)} of {about}{total} runs; use --limit for more)")
    return EXIT_OK


async def _all_steps(client: Client, run_id: str) -> list[dict]:
    """
    Every step of a run, page by page (the server caps a page's size).
    """
    steps: list[dict] = []
    while True:
        body = await client.request("GET", f"/runs/{_q(run_id)}/steps",
                                    params={"limit": 100, "offset": len(steps)})
        page = body.get("steps", [])
        steps.extend(page)
        total = (body.get("pagination") or {}).get("total")
        if not page or not isinstance(total, int) or len(steps) >= total:
            return steps


async def cmd_show(client: Client, args) -> int:
    run = await client.request("GET", f"/runs/{_q(args.run_id)}")
    if args.json:
        print_json(run)
        return EXIT_OK
    steps = await _all_steps(client, args.run_id)
    fields = [
        ("run", run.get("id")),
        ("flow", run.get("flowName")),
        ("status", run.get("status")),
    ]
    for key in ("name", "description", "terminationReason"):
        if run.get(key):
            fields.append((key, run[key]))
    fields += [
        ("created", format_time(run.get("createdAt"))),
        ("started", format_time(run.get("startedAt"))),
        ("completed", format_time(run.get("completedAt"))),
        ("duration", format_duration(run.get("startedAt"), run.get("completedAt"),
                                     run.get("durationMs"))),
    ]
    for key in ("input", "output", "metadata", "error"):
        if run.get(key) not in (None, {}, ""):
            fields.append((key, run[key]))
    if run.get("priority"):
        fields.append(("priority", run["priority"]))
    if run.get("waitReason"):
        fields.append(("waiting", format_wait(run["waitReason"])))
    print_fields(fields)
    stages = run.get("stages") or []
    if stages:
        print()
        print(format_table(
            ["stage", "status", "final", "created", "completed"],
            [(s.get("name"), s.get("status"), s.get("final"),
              format_time(s.get("createdAt")), format_time(s.get("completedAt")))
             for s in stages],
        ))
    if steps:
        print()
        print(format_table(
            ["step", "name", "stage", "status", "retries", "exit", "duration",
             "waiting"],
            [(s.get("id"), s.get("name"), s.get("stage"), s.get("status"),
              s.get("retryCount"), s.get("exitCode"),
              format_duration(s.get("startedAt"), s.get("completedAt"),
                              s.get("durationMs")),
              format_wait(s.get("waitReason")))
             for s in steps],
        ))
    for stream in ("stdout", "stderr"):
        text = run.get(stream)
        if text:
            print(f"\nflow {stream}:")
            print(text.rstrip("\n"))
    return EXIT_OK


async def cmd_logs(client: Client, args) -> int:
    body = await client.request("GET", f"/runs/{_q(args.run_id)}/logs", params={
        "level": args.level, "limit": args.limit,
    })
    if args.json:
        print_json(body)
        return EXIT_OK
    entries = body.get("logs", []) if isinstance(body, dict) else body
    if not entries:
        print("no log entries")
        return EXIT_OK
    # The API answers newest first; a log reads best oldest first.
    for entry in reversed(entries):
        when = entry.get("createdAt", entry.get("timestamp"))
        entity = entry.get("entityType") or "-"
        if entry.get("entityId"):
            entity += f":{entry['entityId']}"
        print(f"{format_time(when)}  {str(entry.get('level', '-')).ljust(5)}  "
              f"{entity}  {entry.get('message', '')}")
    return EXIT_OK


async def cmd_notifications(client: Client, args) -> int:
    body = await client.request("GET", f"/runs/{_q(args.run_id)}/notifications")
    _print_listing(
        args, body, "deliveries",
        ["id", "type", "status", "attempts", "last code", "next attempt", "delivered",
         "url", "last error"],
        lambda d: (d["id"], d["type"], d["status"], d["attempts"], d["lastStatusCode"],
                   format_time(d["nextAttemptAt"]) if d["nextAttemptAt"] else None,
                   format_time(d["deliveredAt"]) if d["deliveredAt"] else None,
                   d["url"], d["lastError"]))
    return EXIT_OK


def _action(verb: str):
    async def command(client: Client, args) -> int:
        body = await client.request("POST", f"/runs/{_q(args.run_id)}/{verb}", {})
        if args.json:
            print_json(body)
            return EXIT_OK
        message = body.get("message") if isinstance(body, dict) else None
        run = body.get("run") if isinstance(body, dict) else None
        if run is None and isinstance(body, dict) and "status" in body:
            run = body
        if message:
            print(message)
        elif run is not None:
            print(f"run {run.get('id', args.run_id)}: {run.get('status')}")
        else:
            print(f"{verb}: ok")
        if verb == "abort" and isinstance(body, dict) and "processesKilled" in body:
            print(f"processes killed: {body['processesKilled']}")
        return EXIT_OK

    command.__name__ = f"cmd_{verb}"
    return command


async def cmd_pools(client: Client, args) -> int:
    body = await client.request("GET", "/pools")
    _print_listing(args, body, "pools", ["pool", "slots", "used", "waiting"],
                   lambda p: (p.get("name"), p.get("slots"), p.get("used"),
                              p.get("waiting")))
    return EXIT_OK


async def cmd_pool(client: Client, args) -> int:
    body = await client.request("PUT", f"/pools/{_q(args.name)}", {"slots": args.slots})
    if args.json:
        print_json(body)
    else:
        print(f"pool {body.get('name')}: {body.get('slots')} slots "
              f"({body.get('used')} used, {body.get('waiting')} waiting)")
    return EXIT_OK


CLIENT_COMMANDS = {
    "flows": cmd_flows,
    "run": cmd_run,
    "runs": cmd_runs,
    "show": cmd_show,
    "logs": cmd_logs,
    "abort": _action("abort"),
    "retry": _action("retry"),
    "pause": _action("pause"),
    "resume": _action("resume"),
    "notifications": cmd_notifications,
    "pools": cmd_pools,
    "pool": cmd_pool,
    "events": cmd_events,
    "output": cmd_output,
    "search": cmd_search,
}
CLIENT_COMMANDS.update(schedules.COMMANDS)
