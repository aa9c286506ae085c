"""
The schedule commands of C{maxq} against a real server, as real
subprocesses: C{schedules}, C{schedule pause|resume}, C{backfill}.
"""

from __future__ import annotations

import json

from tests.cli_support import run_cli

from .schedule_support import add_scheduled, runs_of

# 2026-12-03T00:00:00Z
DAY = 1_796_256_000_000


async def cli(server, *args):
    return await run_cli(server.reactor, *args, url=server.url)


async def test_cli_schedules_pause_resume(maxq, tmp_path):
    server = await maxq.start()
    add_scheduled(server, "nightly", 'schedule: "0 2 * * *"\ntimezone: Europe/Berlin\n')

    async def listed():
        result = await cli(server, "schedules")
        return result if "nightly" in result.out else None

    result = await server.wait_for(listed, what="the schedule listed")
    assert result.code == 0, result
    header, row = result.out.splitlines()[:2]
    assert header.split() == ["FLOW", "EXPRESSION", "TIME", "ZONE", "NEXT", "LAST", "STATE"]
    assert row.startswith("nightly") and "0 2 * * *" in row and "Europe/Berlin" in row
    assert row.rstrip().endswith("active")
    result = await cli(server, "schedule", "pause", "nightly")
    assert result.code == 0 and "paused" in result.out, result
    result = await cli(server, "--json", "schedules")
    assert json.loads(result.out)["schedules"][0]["paused"] is True
    result = await cli(server, "schedule", "resume", "nightly")
    assert result.code == 0 and "active" in result.out, result
    result = await cli(server, "schedule", "pause", "nope")
    assert result.code == 2 and "FLOW_NOT_FOUND" in result.err, result


async def test_cli_backfill_dates_in_the_flow_time_zone(maxq, tmp_path):
    server = await maxq.start()
    add_scheduled(server, "daily", 'schedule: "0 6 * * *"\ntimezone: Europe/Berlin\n')
    result = await cli(server, "backfill", "daily", "--from", "2026-12-01",
                       "--to", "2026-12-03", "--dry-run")
    assert result.code == 0, result
    assert "dry run: 2 runs" in result.out
    # 06:00 in Berlin (CET) is 05:00Z; a date alone is midnight in Berlin.
    assert "2026-12-01T05:00:00Z" in result.out and "2026-12-02T05:00:00Z" in result.out
    assert await runs_of(server, "daily") == []
    result = await cli(server, "--json", "backfill", "daily", "--from",
                       "2026-12-01T00:00:00Z", "--to", "2026-12-03T05:00:00Z",
                       "--max-active", "2", "--reprocess", "all")
    assert result.code == 0, result
    answer = json.loads(result.out)
    assert [r["scheduledAt"] for r in answer["runs"]] == [
        DAY - 2 * 86_400_000 + 5 * 3_600_000, DAY - 86_400_000 + 5 * 3_600_000,
        DAY + 5 * 3_600_000]
    result = await cli(server, "backfill", "daily", "--from", "yesterday", "--to", "x")
    assert result.code == 2 and "ISO 8601" in result.err, result
    server.flows.add("plain", "exit 0\n")
    result = await cli(server, "backfill", "plain", "--from", "2026-12-01",
                       "--to", "2026-12-02")
    assert result.code == 2 and "SCHEDULE_NOT_FOUND" in result.err, result
