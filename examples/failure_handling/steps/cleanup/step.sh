#!/usr/bin/env bash
# Recovery: record which steps of the failed stage failed and why, and set
# the run's output.  FAILED_STAGE comes from the step env set by flow.sh.
set -euo pipefail
. "$MAXQ_LIB"

: "${FAILED_STAGE:?FAILED_STAGE must be set}"
stage_steps=$(maxq_api GET "/runs/$MAXQ_RUN_ID/steps?stage=$FAILED_STAGE")
failures=$(jq -c '[.steps[] | select(.status == "failed") | {id, error, exitCode}]' \
    <<<"$stage_steps")
echo "cleanup after $FAILED_STAGE: $failures"
maxq_set_field failures "$failures"
maxq_set_output "$(jq -c --arg s "$FAILED_STAGE" \
    '{recovered: true, failedStage: $s, failedSteps: map(.id)}' <<<"$failures")"
