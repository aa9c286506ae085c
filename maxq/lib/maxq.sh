# shellcheck shell=bash
#
# maxq.sh: shell helpers for MaxQ flow and step scripts.
#
# Load it at the top of flow.sh or step.sh:
#
#     #!/usr/bin/env bash
#     set -euo pipefail
#     . "$MAXQ_LIB"
#
# The server sets MAXQ_LIB to the absolute path of this file, and MAXQ_API
# (the base URL, ending in /api/v1), MAXQ_RUN_ID, MAXQ_FLOW_NAME and, for
# steps, MAXQ_STEP_ID, MAXQ_STEP_NAME, MAXQ_STAGE and MAXQ_ATTEMPT.  When the
# server requires an API key it also sets MAXQ_TOKEN, which is sent as
# "Authorization: Bearer ..." (through a file descriptor, so the token never
# shows up in the process list).
#
# Sourcing this file only defines functions: it sets no shell options and no
# variables, and every function is safe under `set -euo pipefail`.
#
# Every request is made with curl (-sS --fail-with-body) and a JSON body built
# by jq, never by pasting values into a string.  When the server answers with
# an error, its JSON error body ({"error", "code", "details"}) is printed to
# stderr and the function returns non-zero (curl's status, 22 for an HTTP
# error), so under `set -e` a failed call stops the script.  Wrong usage
# returns 2.  Bodies travel on stdin, so large values are fine.
#
# Functions
# ---------
#
# maxq_schedule STAGE [--final] [--no-fail-fast] [--max-parallel N] STEPS_JSON
#     Schedule a stage of this run: POST $MAXQ_API/runs/$MAXQ_RUN_ID/steps
#     with {"stage", "final", "failFast", "steps"} (and "maxParallel": at
#     most N of the stage's steps run at once).  STEPS_JSON is a JSON array
#     of step objects (or several step objects one after another, as printed
#     by consecutive maxq_step calls); "-" reads it from stdin.  final
#     defaults to false and failFast to true.  Prints the server's response.
#
#         maxq_schedule fetch "$(maxq_step fetch-a fetch env.SOURCE=a
#                                maxq_step fetch-b fetch env.SOURCE=b)"
#         maxq_schedule report --final "$(maxq_step report report)"
#
# maxq_step ID NAME [key=value ...]
#     Print one step object (compact JSON) for STEPS_JSON.  ID is unique in the
#     run, NAME is the script to run (steps/NAME/step.sh).  Keys:
#         deps=a,b        dependsOn: step ids of this or an earlier stage
#         retries=N       maxRetries (default 0)
#         timeout=S       timeoutSeconds
#         delay=MS        retryDelayMs (delay before the first retry)
#         backoff=F       retryBackoff (multiplier for each later retry)
#         env.KEY=VALUE   one entry of the step's env (repeatable)
#         pool=NAME       pool: runs only when the pool has slots free
#         slots=N         poolSlots: how many of the pool's slots (default 1)
#         priority=N      priority, -100 to 100 (default: the run's)
#         requires=a,b    requires: labels the server must have
#         continue-on-failure
#                         continueOnFailure: its failure lets dependents run
#         input.NAME=REF  one entry of inputs: env NAME gets the value of REF,
#                         "STEP_ID.FIELD[.KEY...]" or "input.KEY[.KEY...]"
#
#         maxq_step analyze-0 analyze deps=fetch-a retries=2 delay=500 env.SHARD=0
#         maxq_step load load deps=fetch pool=db priority=5 input.PRICES=fetch.prices
#
# maxq_set_fields JSON_OBJECT
#     Merge a JSON object into this step's fields:
#     POST $MAXQ_API/runs/$MAXQ_RUN_ID/steps/$MAXQ_STEP_ID/fields.
#     "-" reads the object from stdin.  Prints nothing on success.
#
# maxq_set_field KEY VALUE
#     Set one field of this step.  VALUE is used as JSON when it parses as a
#     single JSON value (42, true, [1,2], {"a":1}, "quoted"), otherwise as a
#     plain string.  Prints nothing on success.
#
# maxq_get_fields [STEP_IDS] [FIELD]
#     Print the fields of this run's steps as JSON:
#     GET $MAXQ_API/runs/$MAXQ_RUN_ID/fields?stepId=STEP_IDS&fieldName=FIELD.
#     STEP_IDS is one id or a comma-separated list; empty or omitted means every
#     step.  FIELD keeps only that key of each step's fields.  The answer is
#     {"fields": [{"stepId", "stepName", "stageName", "status", "fields",
#     "completedAt"}, ...]}.
#
# maxq_get_field STEP_ID KEY
#     Print one field value of one step: strings raw, anything else as compact
#     JSON.  Returns 1 (with a message on stderr) when that step has no such
#     field.
#
#         count=$(maxq_get_field fetch-a count)
#
# maxq_log LEVEL MESSAGE [METADATA_JSON]
#     Store a log entry for this run (POST $MAXQ_API/runs/$MAXQ_RUN_ID/logs).
#     In a step the entry is about the step (entityType "step", entityId
#     $MAXQ_STEP_ID); in a flow about the flow (entityType "flow", entityId
#     $MAXQ_FLOW_NAME).  LEVEL is debug, info, warn or error.  METADATA_JSON is
#     an optional JSON object.  Prints nothing on success.
#
# maxq_set_output JSON
#     Set the run's output: PATCH $MAXQ_API/runs/$MAXQ_RUN_ID {"output": JSON}.
#     JSON must be a single JSON value; "-" reads it from stdin.  Prints
#     nothing on success.
#
# maxq_api METHOD PATH [BODY]
#     The generic call the others are built on: METHOD on $MAXQ_API/PATH (PATH
#     starts with "/", e.g. "/runs/$MAXQ_RUN_ID"), with BODY (JSON text) as the
#     request body when given.  Prints the response body.
#
#         maxq_api PATCH "/runs/$MAXQ_RUN_ID" '{"description": "nightly"}'
#         input=$(maxq_api GET "/runs/$MAXQ_RUN_ID" | jq -c '.input')

# --- internal helpers -------------------------------------------------------

# _maxq_need VAR... : fail (status 2) unless every named variable is non-empty.
_maxq_need() {
    local _maxq_var
    for _maxq_var in "$@"; do
        if [ -z "${!_maxq_var:-}" ]; then
            printf 'maxq: %s is not set (is this running under MaxQ?)\n' \
                "$_maxq_var" >&2
            return 2
        fi
    done
}

# _maxq_looks_like_json TEXT : succeed when TEXT could be one strict JSON
# value: an object, array, string, true, false, null or a JSON number (so "007"
# and "NaN", which jq would read as numbers, stay strings).  Whether it really
# parses is left to jq.
_maxq_looks_like_json() {
    local text=$1
    # Trim surrounding whitespace.
    text=${text#"${text%%[![:space:]]*}"}
    text=${text%"${text##*[![:space:]]}"}
    case $text in
        '{'*'}'|'['*']'|'"'*'"'|true|false|null) return 0 ;;
    esac
    [[ $text =~ ^-?(0|[1-9][0-9]*)([.][0-9]+)?([eE][+-]?[0-9]+)?$ ]]
}

# _maxq_urlencode TEXT : print TEXT percent-encoded for a URL query (UTF-8
# bytes; letters, digits and "-._~" unchanged).
_maxq_urlencode() {
    local LC_ALL=C
    local text=$1 out="" char i
    for (( i = 0; i < ${#text}; i++ )); do
        char=${text:i:1}
        case $char in
            [A-Za-z0-9._~-]) out+=$char ;;
            *)
                printf -v char '%%%02X' "'$char"
                out+=$char
                ;;
        esac
    done
    printf '%s' "$out"
}

# _maxq_read_arg ARG : print ARG, or stdin when ARG is "-".
_maxq_read_arg() {
    if [ "$1" = "-" ]; then
        cat
    else
        printf '%s' "$1"
    fi
}

# --- public functions -------------------------------------------------------

maxq_api() {
    if [ $# -lt 2 ] || [ $# -gt 3 ]; then
        echo "usage: maxq_api METHOD PATH [BODY]" >&2
        return 2
    fi
    _maxq_need MAXQ_API || return
    local method=$1 url="${MAXQ_API%/}$2" token="${MAXQ_TOKEN:-}"
    local -a args=(-sS --fail-with-body -X "$method"
                   -H 'Content-Type: application/json')
    if [ $# -eq 3 ]; then
        args+=(--data-binary @-)
    fi
    local out rc=0
    if [ -n "$token" ]; then
        # Strip CR/LF so the token cannot inject extra headers.
        token=${token//[$'\r\n']/}
        if [ $# -eq 3 ]; then
            out=$(curl "${args[@]}" \
                -H @<(printf 'Authorization: Bearer %s\n' "$token") \
                "$url" <<<"$3") || rc=$?
        else
            out=$(curl "${args[@]}" \
                -H @<(printf 'Authorization: Bearer %s\n' "$token") \
                "$url" </dev/null) || rc=$?
        fi
    elif [ $# -eq 3 ]; then
        out=$(curl "${args[@]}" "$url" <<<"$3") || rc=$?
    else
        out=$(curl "${args[@]}" "$url" </dev/null) || rc=$?
    fi
    if [ "$rc" -ne 0 ]; then
        printf 'maxq: %s %s failed (curl exit %d)\n' "$method" "$2" "$rc" >&2
        if [ -n "$out" ]; then
            printf '%s\n' "$out" >&2
        fi
        return "$rc"
    fi
    printf '%s\n' "$out"
}

maxq_schedule() {
    local usage='usage: maxq_schedule STAGE [--final] [--no-fail-fast] [--max-parallel N] STEPS_JSON'
    if [ $# -lt 2 ]; then
        echo "$usage" >&2
        return 2
    fi
    _maxq_need MAXQ_RUN_ID || return
    local stage=$1 final=false fail_fast=true steps_arg="" have_steps=0 max_parallel=""
    shift
    while [ $# -gt 0 ]; do
        case $1 in
            --final) final=true ;;
            --max-parallel)
                if [ $# -lt 2 ] || ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
                    echo "maxq_schedule: --max-parallel needs a positive number" >&2
                    return 2
                fi
                max_parallel=$2
                shift
                ;;
            --no-fail-fast) fail_fast=false ;;
            --fail-fast) fail_fast=true ;;
            *)
                if [ "$have_steps" -eq 1 ]; then
                    echo "$usage" >&2
                    return 2
                fi
                steps_arg=$1
                have_steps=1
                ;;
        esac
        shift
    done
    if [ "$have_steps" -eq 0 ]; then
        echo "$usage" >&2
        return 2
    fi
    local body
    body=$(_maxq_read_arg "$steps_arg" | jq -cs \
        --arg stage "$stage" --argjson final "$final" --argjson ff "$fail_fast" \
        --arg mp "$max_parallel" '
        (if length == 1 and (.[0] | type) == "array" then .[0] else . end) as $steps
        | if ($steps | all(type == "object")) then
              {stage: $stage, final: $final, failFast: $ff, steps: $steps}
              + (if $mp != "" then {maxParallel: ($mp | tonumber)} else {} end)
          else
              "" | halt_error(2)
          end') || {
        echo "maxq_schedule: STEPS_JSON must be a JSON array of step objects" >&2
        return 2
    }
    maxq_api POST "/runs/$MAXQ_RUN_ID/steps" "$body"
}

maxq_step() {
    if [ $# -lt 2 ]; then
        echo "usage: maxq_step ID NAME [deps=a,b] [retries=N] [timeout=S] [delay=MS] [backoff=F] [env.KEY=VALUE ...] [pool=NAME] [slots=N] [priority=N] [requires=a,b] [continue-on-failure] [input.NAME=REF ...]" >&2
        return 2
    fi
    local id=$1 name=$2 kv key value
    local deps="" has_deps=0 retries=0 timeout="" delay="" backoff=""
    local pool="" slots="" priority="" requires="" has_requires=0 cof=false inputs=""
    local -a env_pairs=()
    shift 2
    for kv in "$@"; do
        case $kv in
            continue-on-failure) kv=continue-on-failure=true ;;
        esac
        case $kv in
            *=*) ;;
            *)
                printf 'maxq_step: expected key=value, got %q\n' "$kv" >&2
                return 2
                ;;
        esac
        key=${kv%%=*}
        value=${kv#*=}
        case $key in
            deps|dependsOn)
                deps=$value
                has_deps=1
                ;;
            retries|maxRetries)
                if ! [[ $value =~ ^[0-9]+$ ]]; then
                    echo "maxq_step: retries must be a whole number, got '$value'" >&2
                    return 2
                fi
                retries=$value
                ;;
            timeout|timeoutSeconds)
                if ! [[ $value =~ ^[0-9]+([.][0-9]+)?$ ]]; then
                    echo "maxq_step: timeout must be a number of seconds, got '$value'" >&2
                    return 2
                fi
                timeout=$value
                ;;
            delay|retryDelayMs)
                if ! [[ $value =~ ^[0-9]+$ ]]; then
                    echo "maxq_step: delay must be whole milliseconds, got '$value'" >&2
                    return 2
                fi
                delay=$value
                ;;
            backoff|retryBackoff)
                if ! [[ $value =~ ^[0-9]+([.][0-9]+)?$ ]]; then
                    echo "maxq_step: backoff must be a number, got '$value'" >&2
                    return 2
                fi
                backoff=$value
                ;;
            pool)
                pool=$value
                ;;
            slots|poolSlots)
                if ! [[ $value =~ ^[1-9][0-9]*$ ]]; then
                    echo "maxq_step: slots must be a positive whole number, got '$value'" >&2
                    return 2
                fi
                slots=$value
                ;;
            priority)
                if ! [[ $value =~ ^-?[0-9]+$ ]]; then
                    echo "maxq_step: priority must be a whole number, got '$value'" >&2
                    return 2
                fi
                priority=$value
                ;;
            requires)
                requires=$value
                has_requires=1
                ;;
            continue-on-failure|continueOnFailure)
                case $value in
                    true|false) cof=$value ;;
                    *)
                        echo "maxq_step: continue-on-failure is true or false, got '$value'" >&2
                        return 2
                        ;;
                esac
                ;;
            input.*)
                key=${key#input.}
                if ! [[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [[ $value == *$'\n'* ]]; then
                    echo "maxq_step: bad input '$key'" >&2
                    return 2
                fi
                inputs+="$key=$value"$'\n'
                ;;
            env.*)
                key=${key#env.}
                if ! [[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
                    echo "maxq_step: bad env name '$key'" >&2
                    return 2
                fi
                env_pairs+=("$key=$value")
                ;;
            *)
                echo "maxq_step: unknown key '$key' (use deps, retries, timeout, delay, backoff, env.NAME, pool, slots, priority, requires, continue-on-failure or input.NAME)" >&2
                return 2
                ;;
        esac
    done
    jq -cn --arg id "$id" --arg name "$name" --arg retries "$retries" \
        --arg deps "$deps" --arg has_deps "$has_deps" --arg timeout "$timeout" \
        --arg delay "$delay" --arg backoff "$backoff" --arg pool "$pool" \
        --arg slots "$slots" --arg priority "$priority" --arg requires "$requires" \
        --arg has_requires "$has_requires" --argjson cof "$cof" --arg inputs "$inputs" '
        {id: $id, name: $name, maxRetries: ($retries | tonumber)}
        + (if $pool != "" then {pool: $pool} else {} end)
        + (if $slots != "" then {poolSlots: ($slots | tonumber)} else {} end)
        + (if $priority != "" then {priority: ($priority | tonumber)} else {} end)
        + (if $has_requires == "1" then
               {requires: ($requires | split(",") | map(select(. != "")))}
           else {} end)
        + (if $cof then {continueOnFailure: true} else {} end)
        + (if $inputs != "" then
               {inputs: ($inputs | split("\n") | map(select(. != ""))
                         | map(index("=") as $i | {(.[:$i]): .[$i + 1:]}) | add)}
           else {} end)
        + (if $has_deps == "1" then
               {dependsOn: ($deps | split(",") | map(select(. != "")))}
           else {} end)
        + (if $timeout != "" then {timeoutSeconds: ($timeout | tonumber)} else {} end)
        + (if $delay != "" then {retryDelayMs: ($delay | tonumber)} else {} end)
        + (if $backoff != "" then {retryBackoff: ($backoff | tonumber)} else {} end)
        + (if ($ARGS.positional | length) > 0 then
               {env: (reduce $ARGS.positional[] as $p ({};
                   ($p | index("=")) as $i | . + {($p[:$i]): $p[$i + 1:]}))}
           else {} end)
        ' --args ${env_pairs[@]+"${env_pairs[@]}"}
}

maxq_set_fields() {
    if [ $# -ne 1 ]; then
        echo "usage: maxq_set_fields JSON_OBJECT" >&2
        return 2
    fi
    _maxq_need MAXQ_RUN_ID MAXQ_STEP_ID || return
    local body
    body=$(_maxq_read_arg "$1" | jq -cs '
        if length == 1 and (.[0] | type) == "object" then {fields: .[0]}
        else "" | halt_error(2) end') || {
        echo "maxq_set_fields: JSON_OBJECT must be one JSON object" >&2
        return 2
    }
    maxq_api POST "/runs/$MAXQ_RUN_ID/steps/$MAXQ_STEP_ID/fields" "$body" >/dev/null
}

maxq_set_field() {
    if [ $# -ne 2 ]; then
        echo "usage: maxq_set_field KEY VALUE" >&2
        return 2
    fi
    _maxq_need MAXQ_RUN_ID MAXQ_STEP_ID || return
    local body
    if _maxq_looks_like_json "$2"; then
        body=$(printf '%s' "$2" | jq -cs --arg k "$1" '
            if length == 1 then {fields: {($k): .[0]}} else error("") end' \
            2>/dev/null) || body=""
    fi
    if [ -z "${body:-}" ]; then
        body=$(printf '%s' "$2" | jq -Rsc --arg k "$1" '{fields: {($k): .}}') || return
    fi
    maxq_api POST "/runs/$MAXQ_RUN_ID/steps/$MAXQ_STEP_ID/fields" "$body" >/dev/null
}

maxq_get_fields() {
    if [ $# -gt 2 ]; then
        echo "usage: maxq_get_fields [STEP_IDS] [FIELD]" >&2
        return 2
    fi
    _maxq_need MAXQ_RUN_ID || return
    local query=""
    if [ -n "${1:-}" ]; then
        query="stepId=$(_maxq_urlencode "$1")"
    fi
    if [ -n "${2:-}" ]; then
        query="${query:+$query&}fieldName=$(_maxq_urlencode "$2")"
    fi
    query=${query:+?$query}
    maxq_api GET "/runs/$MAXQ_RUN_ID/fields$query"
}

maxq_get_field() {
    if [ $# -ne 2 ]; then
        echo "usage: maxq_get_field STEP_ID KEY" >&2
        return 2
    fi
    local out
    out=$(maxq_get_fields "$1" "$2") || return
    printf '%s' "$out" | jq -rc --arg id "$1" --arg k "$2" '
        [ .fields[]? | select(.stepId == $id)
          | select((.fields | type) == "object" and (.fields | has($k))) ]
        | if length == 0 then
              "maxq_get_field: step \($id) has no field \($k)\n" | halt_error(1)
          else .[0].fields[$k] end'
}

maxq_log() {
    if [ $# -lt 2 ] || [ $# -gt 3 ]; then
        echo "usage: maxq_log LEVEL MESSAGE [METADATA_JSON]" >&2
        return 2
    fi
    _maxq_need MAXQ_RUN_ID || return
    local entity_type entity_id body
    if [ -n "${MAXQ_STEP_ID:-}" ]; then
        entity_type=step
        entity_id=$MAXQ_STEP_ID
    else
        entity_type=flow
        entity_id=${MAXQ_FLOW_NAME:-}
    fi
    body=$(printf '%s' "${3:-}" | jq -cs --arg t "$entity_type" --arg id "$entity_id" \
        --arg level "$1" --arg msg "$2" '
        {entityType: $t, level: $level, message: $msg}
        + (if $id != "" then {entityId: $id} else {} end)
        + (if length == 0 then {}
           elif length == 1 and (.[0] | type) == "object" then {metadata: .[0]}
           else "" | halt_error(2) end)
        ') || {
        echo "maxq_log: METADATA_JSON must be one JSON object" >&2
        return 2
    }
    maxq_api POST "/runs/$MAXQ_RUN_ID/logs" "$body" >/dev/null
}

maxq_set_output() {
    if [ $# -ne 1 ]; then
        echo "usage: maxq_set_output JSON" >&2
        return 2
    fi
    _maxq_need MAXQ_RUN_ID || return
    local body
    body=$(_maxq_read_arg "$1" | jq -cs '
        if length == 1 then {output: .[0]}
        else "" | halt_error(2) end') || {
        echo "maxq_set_output: JSON must be exactly one JSON value" >&2
        return 2
    }
    maxq_api PATCH "/runs/$MAXQ_RUN_ID" "$body" >/dev/null
}
