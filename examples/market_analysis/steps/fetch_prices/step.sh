#!/usr/bin/env bash
# Generate DAYS daily closing prices for each symbol in SYMBOLS (comma list)
# and post them as the field "prices": {"SYMBOL": [p1, p2, ...]}.
#
# The numbers are made up but deterministic: a small pseudo-random generator
# seeded with the CRC of the symbol name, so every run sees the same market.
set -euo pipefail
. "$MAXQ_LIB"

: "${SYMBOLS:?SYMBOLS must be set}"
days=${DAYS:-30}

IFS=, read -ra symbols <<<"$SYMBOLS"
lines=""
for symbol in "${symbols[@]}"; do
    read -r seed _ < <(printf '%s' "$symbol" | cksum)
    seed=$(( seed % 2147483646 + 1 ))
    price=$(( 5000 + seed % 20000 ))          # cents
    line=$symbol
    for (( day = 0; day < days; day++ )); do
        seed=$(( seed * 16807 % 2147483647 ))
        move=$(( seed % 601 - 300 ))          # -3.00% .. +3.00%, in basis points
        price=$(( price * (10000 + move) / 10000 ))
        line+=" $price"
    done
    lines+="$line"$'\n'
done

echo "generated $days prices for ${#symbols[@]} symbols"
maxq_set_fields "$(jq -R -s -c --argjson days "$days" '
    [ split("\n")[] | select(. != "") | split(" ")
      | {key: .[0], value: (.[1:] | map(tonumber / 100))} ]
    | {prices: from_entries, days: $days}' <<<"$lines")"
