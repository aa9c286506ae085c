#!/usr/bin/env bash
# Always fails.  Scheduled with maxRetries 0, so its stage fails.
set -euo pipefail
. "$MAXQ_LIB"

maxq_set_field lastWords "this step always fails"
echo "doomed: giving up" >&2
exit 1
