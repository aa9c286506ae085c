#!/usr/bin/env bash
# market_analysis: fetch -> analysis -> report (final).
#
#   fetch     fetch-prices (script fetch_prices) and fetch-news (fetch_news),
#             in parallel.
#   analysis  four steps that all run the script "analyze", told apart by
#             their env (ANALYZER=trend|volatility|momentum|sentiment).  Each
#             depends on the fetch step whose data it reads (dependsOn may name
#             steps of an earlier, completed stage) and gets that data as the
#             env var DATA through its inputs (input.DATA=STEP.FIELD).
#   report    one step that reads every analyzer's fields and sets the run's
#             output.  Final: when it completes, the run is completed.
#
# No network access: the fetch steps generate their data from the symbol names.
set -euo pipefail
. "$MAXQ_LIB"

case "${MAXQ_COMPLETED_STAGE:-}" in
    "")
        # The run's input may choose the symbols and the number of days.
        run=$(maxq_api GET "/runs/$MAXQ_RUN_ID")
        symbols=$(jq -r '
            (.input.symbols // ["ACME", "GLOBEX", "INITECH", "UMBRELLA"])
            | if type == "array" and length > 0
                 and all(type == "string" and test("^[A-Za-z0-9._-]{1,16}$"))
              then join(",")
              else error("input.symbols must be a non-empty array of ticker symbols")
              end' <<<"$run")
        days=$(jq -r '.input.days // 30 | tostring' <<<"$run")
        if ! [[ $days =~ ^[0-9]+$ ]] || [ "$days" -lt 2 ] || [ "$days" -gt 365 ]; then
            echo "market_analysis: input.days must be a whole number from 2 to 365" >&2
            exit 1
        fi
        maxq_log info "analysing $symbols over $days days"
        maxq_schedule fetch "$(
            maxq_step fetch-prices fetch_prices retries=1 timeout=30 \
                "env.SYMBOLS=$symbols" "env.DAYS=$days"
            maxq_step fetch-news fetch_news retries=1 timeout=30 \
                "env.SYMBOLS=$symbols"
        )"
        ;;
    fetch)
        maxq_schedule analysis "$(
            for analyzer in trend volatility momentum sentiment; do
                source=fetch-prices field=prices
                [ "$analyzer" = sentiment ] && source=fetch-news field=articles
                maxq_step "analyze-$analyzer" analyze "deps=$source" timeout=30 \
                    "env.ANALYZER=$analyzer" "env.SOURCE_STEP=$source" \
                    "input.DATA=$source.$field"
            done
        )"
        ;;
    analysis)
        maxq_schedule report --final "$(maxq_step report report timeout=30)"
        ;;
    *)
        echo "market_analysis: unexpected callback for stage '${MAXQ_COMPLETED_STAGE}'" >&2
        exit 1
        ;;
esac
