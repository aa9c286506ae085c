#!/usr/bin/env bash
# Post a greeting as this step's fields.  GREETING_TARGET comes from the
# step's env, set by flow.sh.
set -euo pipefail
. "$MAXQ_LIB"

message="Hello, ${GREETING_TARGET:-world}!"
echo "$message"
# Build JSON with jq, never by pasting values into a string.
maxq_set_fields "$(jq -cn --arg m "$message" --argjson at "$(date +%s)" \
    '{message: $m, greetedAt: $at}')"
maxq_log info "greeted ${GREETING_TARGET:-world}"
