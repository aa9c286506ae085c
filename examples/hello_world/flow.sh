#!/usr/bin/env bash
# hello_world: two stages, one step each.
#
# MaxQ calls this script once when the run starts (MAXQ_COMPLETED_STAGE is
# empty) and again after every stage that completes without being final.
set -euo pipefail
. "$MAXQ_LIB"

case "${MAXQ_COMPLETED_STAGE:-}" in
    "")
        # First call: schedule the greeting.
        maxq_schedule greeting "$(maxq_step greet greet env.GREETING_TARGET=world)"
        ;;
    greeting)
        # The greeting is done; "farewell" is final, so once it completes the
        # run is completed and this script is not called again.
        maxq_schedule farewell --final "$(maxq_step farewell farewell)"
        ;;
    *)
        echo "hello_world: unexpected callback for stage '${MAXQ_COMPLETED_STAGE}'" >&2
        exit 1
        ;;
esac
