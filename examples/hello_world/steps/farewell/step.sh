#!/usr/bin/env bash
# Read the greeting posted by step "greet" in the earlier stage, post a
# farewell and make both the run's output.  The farewell stage is final, so
# the output has to be set here: flow.sh is not called again.
set -euo pipefail
. "$MAXQ_LIB"

greeting=$(maxq_get_field greet message)
farewell="Goodbye, world!"
echo "$greeting / $farewell"
maxq_set_field message "$farewell"
maxq_set_output "$(jq -cn --arg g "$greeting" --arg f "$farewell" \
    '{greeting: $g, farewell: $f}')"
