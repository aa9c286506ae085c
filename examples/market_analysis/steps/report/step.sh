#!/usr/bin/env bash
# Combine the fields of every "analyze" step into one summary per symbol, post
# it as the field "summary" and make it the run's output.
set -euo pipefail
. "$MAXQ_LIB"

# No step ids given: the fields of every step of the run.  The analyzers are
# recognised by their script name.
all=$(maxq_get_fields)

summary=$(jq -c '
    [ .fields[] | select(.stepName == "analyze" and .status == "completed") ] as $steps
    | [ $steps[] | .fields | .analyzer as $a | .results | to_entries[]
        | {symbol: .key, analyzer: $a, value: .value} ]
    | if length == 0 then error("no analyzer results found") else . end
    | group_by(.symbol)
    | map(
        (map({key: .analyzer, value: .value}) | from_entries) as $m
        | ([($m.trend // 0), ($m.momentum // 0), ($m.sentiment // 0)]
           | map(if . > 0 then 1 elif . < 0 then -1 else 0 end) | add) as $score
        | {key: .[0].symbol,
           value: ($m + {score: $score,
                         signal: (if $score >= 2 then "buy"
                                  elif $score <= -2 then "sell"
                                  else "hold" end)})})
    | from_entries
    | {symbols: ., analyzers: ($steps | map(.stepId) | sort)}' <<<"$all")

echo "$summary"
maxq_set_field summary "$summary"
maxq_set_output "$summary"
