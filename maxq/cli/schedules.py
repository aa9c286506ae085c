"""
The schedule commands: C{maxq schedules} (a table of every schedule),
C{maxq schedule pause|resume FLOW} and C{maxq backfill FLOW --from WHEN --to
WHEN}.  Times are ISO 8601; one without an offset (a date alone means
midnight) is read in the flow's time zone.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from urllib.parse import quote
from zoneinfo import ZoneInfo

from maxq.cli.exits import EXIT_ERROR, EXIT_OK
from maxq.cli.render import format_table, format_time, print_json


def add_parsers(commands, common) -> None:
    commands.add_parser("schedules", parents=[common], help="list schedules")
    schedule = commands.add_parser("schedule", parents=[common],
                                   help="pause or resume a flow's schedule")
    schedule.add_argument("action", choices=("pause", "resume"))
    schedule.add_argument("flow")
    backfill = commands.add_parser(
        "backfill", parents=[common],
        help="run a flow for each of its fire times between two times",
        description="One run per fire time from --from to --to (both included). "
        "WHEN is ISO 8601 (2026-12-01, 2026-12-01T06:00, 2026-12-01T06:00:00Z) "
        "or epoch milliseconds; without an offset it is read in the flow's time "
        "zone, and a date alone means midnight.")
    backfill.add_argument("flow")
    backfill.add_argument("--from", dest="start", required=True, metavar="WHEN")
    backfill.add_argument("--to", dest="end", required=True, metavar="WHEN")
    backfill.add_argument("--dry-run", action="store_true",
                          help="only show the fire times it would run")
    backfill.add_argument("--reprocess", choices=("none", "failed", "all"),
                          default=None,
                          help="fire times that already have a run: skip them "
                          "(none, the default), re-run the failed ones, or all")
    backfill.add_argument("--max-active", type=_positive, default=None,
                          help="runs of the backfill at once (default 1)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def parse_when(text: str, zone: str) -> int:
    """
    Epoch ms of an ISO 8601 time (or of epoch ms as given); without an
    offset, in C{zone}.  ValueError when it is neither.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc if zone == "UTC" else ZoneInfo(zone))
    return int(when.timestamp() * 1000)


def _utc(ms) -> str:
    if not isinstance(ms, int):
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def cmd_schedules(client, args) -> int:
    body = await client.request("GET", "/schedules")
    if args.json:
        print_json(body)
        return EXIT_OK
    entries = body.get("schedules", [])
    if not entries:
        print("no schedules")
        return EXIT_OK
    print(format_table(
        ["flow", "expression", "time zone", "next", "last", "state"],
        [(e.get("flowName"), ", ".join(e.get("expressions") or []), e.get("timezone"),
          format_time(e.get("nextAt")), format_time(e.get("lastAt")),
          "paused" if e.get("paused") else "active") for e in entries],
    ))
    return EXIT_OK


async def cmd_schedule(client, args) -> int:
    entry = await client.request(
        "POST", f"/flows/{quote(args.flow, safe='')}/schedule/{args.action}", {})
    if args.json:
        print_json(entry)
    else:
        state = "paused" if entry.get("paused") else "active"
        print(f"schedule of {entry.get('flowName')}: {state}"
              + (f", next {format_time(entry['nextAt'])}" if entry.get("nextAt") else ""))
    return EXIT_OK


async def cmd_backfill(client, args) -> int:
    flow = quote(args.flow, safe="")
    entry = await client.request("GET", f"/flows/{flow}/schedule")
    zone = entry.get("timezone", "UTC")
    body = {}
    for key, text in (("from", args.start), ("to", args.end)):
        try:
            body[key] = parse_when(text, zone)
        except (ValueError, OverflowError):
            print(f"error: --{key} {text!r} is not an ISO 8601 time", file=sys.stderr)
            return EXIT_ERROR
    if args.dry_run:
        body["dryRun"] = True
    if args.reprocess:
        body["reprocess"] = args.reprocess
    if args.max_active:
        body["maxActiveRuns"] = args.max_active
    answer = await client.request("POST", f"/flows/{flow}/backfills", body)
    if args.json:
        print_json(answer)
        return EXIT_OK
    runs = answer.get("runs", [])
    skipped = answer.get("skipped", [])
    if answer.get("id"):
        print(f"backfill {answer['id']}: {len(runs)} runs, {len(skipped)} fire times "
              "skipped (they have runs)")
    else:
        print(f"dry run: {len(runs)} runs, {len(skipped)} fire times skipped "
              "(they have runs)")
    if runs:
        print(format_table(["scheduled", "run"],
                           [(_utc(r.get("scheduledAt")), r.get("id")) for r in runs]))
    return EXIT_OK


COMMANDS = {"schedules": cmd_schedules, "schedule": cmd_schedule,
            "backfill": cmd_backfill}
