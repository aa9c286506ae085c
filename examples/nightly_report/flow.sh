#!/usr/bin/env bash
# nightly_report: one final stage that summarises the day the run is for.
#
# MAXQ_TRIGGER says who started the run (api, schedule or backfill) and, for
# schedule and backfill runs, MAXQ_SCHEDULED_AT the fire time it is for
# (ISO 8601 UTC): a backfill of last week reports on last week's days.
set -euo pipefail
. "$MAXQ_LIB"

if [ -z "${MAXQ_COMPLETED_STAGE:-}" ]; then
    for_time="${MAXQ_SCHEDULED_AT:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}"
    maxq_schedule report --final \
        "$(maxq_step summarize summarize env.REPORT_FOR="$for_time" \
            env.REPORT_TRIGGER="${MAXQ_TRIGGER:-api}")"
fi
