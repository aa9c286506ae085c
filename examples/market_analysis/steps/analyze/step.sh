#!/usr/bin/env bash
# One script, four analyzers: the flow schedules it four times with different
# env.  ANALYZER picks the computation, SOURCE_STEP names the fetch step whose
# data it reads, and DATA is that data (a field of the fetch step, given by the
# server from the step's inputs, as JSON).  Posts {"analyzer", "source",
# "results": {SYMBOL: number}}.
set -euo pipefail
. "$MAXQ_LIB"

: "${ANALYZER:?ANALYZER must be set}"
: "${SOURCE_STEP:?SOURCE_STEP must be set}"
: "${DATA:?DATA must be set (the inputs of the step)}"

# The programs below are jq, not shell: $r, $avg... are jq variables.
# shellcheck disable=SC2016
case "$ANALYZER" in
    trend)
        # Percent change from the first to the last price.
        compute='map_values((.[-1] - .[0]) / .[0] * 100)'
        ;;
    volatility)
        # Standard deviation of the daily returns, in percent.
        compute='map_values(
            [range(1; length) as $i | (.[$i] - .[$i - 1]) / .[$i - 1] * 100] as $r
            | ($r | add / length) as $mean
            | $r | map(. - $mean | . * .) | add / length | sqrt)'
        ;;
    momentum)
        # Last price against the average of the last five, in percent.
        compute='map_values((.[-5:] | add / length) as $avg | (.[-1] - $avg) / $avg * 100)'
        ;;
    sentiment)
        # Average sentiment of each symbol's headlines.
        compute='group_by(.symbol)
            | map({key: .[0].symbol, value: (map(.sentiment) | add / length)})
            | from_entries'
        ;;
    *)
        echo "analyze: unknown ANALYZER '$ANALYZER'" >&2
        exit 2
        ;;
esac

# Compute, round to two decimals and wrap the result for posting, in one jq call.
fields=$(jq -c --arg a "$ANALYZER" --arg s "$SOURCE_STEP" "
    $compute
    | map_values(. * 100 | round / 100)
    | {analyzer: \$a, source: \$s, results: .}" <<<"$DATA")

echo "$fields"
maxq_set_fields "$fields"
