#!/usr/bin/env bash
# Generate three headlines per symbol in SYMBOLS, each with a sentiment score
# between -1 and 1, and post them as the fields "articles" and "count".
# Deterministic, like fetch_prices: the choice depends only on the symbol.
set -euo pipefail
. "$MAXQ_LIB"

: "${SYMBOLS:?SYMBOLS must be set}"

templates=(
    "0.8|%s beats quarterly expectations"
    "0.6|%s announces new product line"
    "0.3|Analysts upgrade %s"
    "0.0|%s holds annual shareholder meeting"
    "-0.2|%s delays product launch"
    "-0.5|Regulators open inquiry into %s"
    "-0.7|%s misses revenue targets"
    "0.4|%s expands into new markets"
)

IFS=, read -ra symbols <<<"$SYMBOLS"
lines=""
for symbol in "${symbols[@]}"; do
    read -r seed _ < <(printf '%s' "$symbol" | cksum)
    for (( i = 0; i < 3; i++ )); do
        template=${templates[(seed / (i + 1) + i * 3) % ${#templates[@]}]}
        # shellcheck disable=SC2059  # the template is ours, %s is the symbol
        printf -v headline "${template#*|}" "$symbol"
        lines+="$symbol"$'\t'"${template%%|*}"$'\t'"$headline"$'\n'
    done
done

echo "generated $(( ${#symbols[@]} * 3 )) articles"
maxq_set_fields "$(jq -R -s -c '
    [ split("\n")[] | select(. != "") | split("\t")
      | {symbol: .[0], sentiment: (.[1] | tonumber), headline: .[2]} ]
    | {articles: ., count: length}' <<<"$lines")"
