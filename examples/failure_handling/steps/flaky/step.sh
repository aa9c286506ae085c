#!/usr/bin/env bash
# Fails on the first attempt, succeeds on any later one.  MAXQ_ATTEMPT is
# 1-based: 1 for the first run, 2 for the first retry, ...
set -euo pipefail
. "$MAXQ_LIB"

attempt=${MAXQ_ATTEMPT:-1}
if [ "$attempt" -eq 1 ]; then
    echo "flaky: attempt $attempt fails on purpose" >&2
    exit 1
fi
echo "flaky: attempt $attempt succeeds"
maxq_set_fields "$(jq -cn --argjson a "$attempt" '{succeededOnAttempt: $a}')"
