#!/usr/bin/env bash
# failure_handling: retries, a stage that fails for good, and recovery.
#
# What happens, call by call:
#
# 1. First call (MAXQ_COMPLETED_STAGE empty): schedule stage "flaky" with one
#    step allowed 2 retries, 100 ms apart (then 200 ms: retryBackoff 2).  Its
#    first attempt exits 1; MaxQ puts it back to pending (retryCount 1) and
#    the second attempt (MAXQ_ATTEMPT=2) succeeds.  The stage completes.
#
# 2. MAXQ_COMPLETED_STAGE=flaky: schedule stage "doomed" with step "doomed"
#    (maxRetries 0, always exits 1) and step "publish", which depends on it.
#    "doomed" fails; "publish" is marked failed with
#    error {"reason": "dependency_failed", "failedStep": "doomed"} and never
#    runs.  The stage fails.
#
# 3. MAXQ_FAILED_STAGE=doomed (and MAXQ_COMPLETED_STAGE=flaky, the last stage
#    that completed): schedule the final stage "cleanup".  Had this call
#    scheduled nothing, the run would have failed with
#    error {"reason": "stage_failed", "stage": "doomed"}.
#
# 4. "cleanup" completes and is final, so the run is completed.
#
# Check MAXQ_FAILED_STAGE first: after a failure MAXQ_COMPLETED_STAGE still
# names the last stage that completed.
set -euo pipefail
. "$MAXQ_LIB"

failed=${MAXQ_FAILED_STAGE:-}
completed=${MAXQ_COMPLETED_STAGE:-}

if [ -n "$failed" ]; then
    case "$failed" in
        doomed)
            maxq_log warn "stage doomed failed; scheduling cleanup"
            maxq_schedule cleanup --final "$(
                maxq_step cleanup cleanup "env.FAILED_STAGE=$failed")"
            ;;
        *)
            # Nothing to recover: scheduling nothing fails the run.
            maxq_log error "stage $failed failed; giving up"
            ;;
    esac
    exit 0
fi

case "$completed" in
    "")
        maxq_schedule flaky "$(maxq_step flaky flaky retries=2 delay=100 backoff=2)"
        ;;
    flaky)
        maxq_schedule doomed "$(
            maxq_step doomed doomed retries=0
            maxq_step publish publish deps=doomed
        )"
        ;;
    *)
        echo "failure_handling: unexpected callback for stage '$completed'" >&2
        exit 1
        ;;
esac
