#!/usr/bin/env bash
# Summarise the day the run is for.  Nothing is written outside MaxQ: the
# summary is this step's fields and the run's output.
set -euo pipefail
. "$MAXQ_LIB"

day="${REPORT_FOR%%T*}"
echo "report for $day (triggered by $REPORT_TRIGGER)"
summary=$(jq -cn --arg day "$day" --arg trigger "$REPORT_TRIGGER" \
    '{day: $day, trigger: $trigger}')
maxq_set_fields "$summary"
maxq_set_output "$summary"
