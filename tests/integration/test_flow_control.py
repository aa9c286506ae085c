"""
Flow control (SPEC §6) through real HTTP and real processes, on every
backend: each limit, priorities, pools and their routes, placement,
continueOnFailure and inputs.  Limits are checked from the intervals the
step scripts write themselves (start and end times): a limit of N holds
when no more than N intervals ever overlap.
"""

from __future__ import annotations

from pathlib import Path

# Appends "<start> <end> <run> <step>" (nanoseconds) to $OUT/intervals.
TIMED = """
start=$(date +%s%N)
sleep "${PAUSE:-0.2}"
echo "$start $(date +%s%N) $MAXQ_RUN_ID $MAXQ_STEP_ID" >> "$OUT/intervals"
"""

# Schedules one final stage from the run's input: {"stage": {...}}.
FROM_INPUT = """
if [ -z "$MAXQ_COMPLETED_STAGE" ] && [ -z "${MAXQ_FAILED_STAGE:-}" ]; then
  body=$(curl -sS "$MAXQ_API/runs/$MAXQ_RUN_ID" | jq -c '.input.stage')
  curl -sS --fail-with-body -H 'Content-Type: application/json' \\
    -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d "$body" >/dev/null
fi
"""


def intervals(out: Path) -> list[tuple[int, int, str, str]]:
    path = out / "intervals"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        start, end, run, step = line.split()
        rows.append((int(start), int(end), run, step))
    return rows


def most_overlapping(spans) -> int:
    """
    The largest number of the C{(start, end)} intervals open at once.
    """
    events = sorted([(s, 1) for s, *_ in spans] + [(e, -1) for _s, e, *_ in spans],
                    key=lambda ev: (ev[0], ev[1]))
    open_now = best = 0
    for _, delta in events:
        open_now += delta
        best = max(best, open_now)
    return best


def stage(steps, **extra) -> dict:
    return {"stage": {"stage": "work", "final": True, "steps": steps, **extra}}


def step(step_id, **extra) -> dict:
    return {"id": step_id, "name": "timed", "maxRetries": 0, **extra}


def add_flow(server, tmp_path, name="fc", flow_yaml=None, pause="0.2"):
    out = tmp_path / f"out-{name}"
    out.mkdir(exist_ok=True)
    server.flows.add(name, FROM_INPUT, flow_yaml=flow_yaml, steps={
        "timed": f'OUT="{out}"\nPAUSE="${{PAUSE:-{pause}}}"\n' + TIMED})
    return out


async def finish_all(server, run_ids, status="completed", timeout=60.0):
    for run_id in run_ids:
        run = await server.wait_run(run_id, timeout=timeout)
        assert run["status"] == status, run


async def test_max_active_runs_holds_and_starts_by_priority_then_age(maxq, tmp_path):
    server = await maxq.start()
    out = add_flow(server, tmp_path, flow_yaml="maxActiveRuns: 1\n", pause="0.3")
    first = await server.trigger("fc", {"input": stage([step("a")])})
    await server.wait_run(first["id"], {"running"})
    low = await server.trigger("fc", {"input": stage([step("a")])})
    high = await server.trigger("fc", {"input": stage([step("a")]), "priority": 10})
    assert high["priority"] == 10 and low["priority"] == 0

    async def waiting():
        _, run = await server.get(f"/runs/{low['id']}")
        return run if run["waitReason"] else None

    run = await server.wait_for(waiting, what="a waitReason on the pending run")
    assert run["status"] == "pending"
    assert run["waitReason"] == {"reason": "flow_limit", "limit": 1, "flow": "fc"}
    ids = [first["id"], low["id"], high["id"]]
    await finish_all(server, ids)
    runs = {i: (await server.get(f"/runs/{i}"))[1] for i in ids}
    assert all(r["waitReason"] is None for r in runs.values())
    # One step per run: their intervals, written by the scripts, never overlap.
    spans = intervals(out)
    assert len(spans) == 3 and most_overlapping(spans) == 1
    started = {run: start for start, _end, run, _step in spans}
    assert started[high["id"]] < started[low["id"]]


async def test_concurrency_is_the_old_name_of_max_active_runs(maxq, tmp_path):
    server = await maxq.start()
    out = add_flow(server, tmp_path, flow_yaml="concurrency: 2\n", pause="0.2")
    ids = [(await server.trigger("fc", {"input": stage([step("a")])}))["id"]
           for _ in range(5)]
    await finish_all(server, ids)
    spans = intervals(out)
    assert len(spans) == 5 and most_overlapping(spans) <= 2


async def test_max_running_steps_holds_across_the_flows_runs(maxq, tmp_path):
    server = await maxq.start()
    out = add_flow(server, tmp_path, flow_yaml="maxRunningSteps: 2\n")
    ids = [(await server.trigger("fc", {"input": stage([step(f"s{i}") for i in range(4)])}))
           ["id"] for _ in range(2)]

    async def waiting():
        for run_id in ids:
            for s in await server.steps(run_id):
                if s["status"] == "pending" and s["waitReason"]:
                    return s
        return None

    held = await server.wait_for(waiting, what="a step waiting for the flow's limit")
    assert held["waitReason"] == {"reason": "flow_step_limit", "limit": 2, "flow": "fc"}
    await finish_all(server, ids)
    spans = intervals(out)
    assert len(spans) == 8
    assert most_overlapping(spans) == 2


async def test_max_parallel_holds_within_the_stage(maxq, tmp_path):
    server = await maxq.start()
    out = add_flow(server, tmp_path)
    run = await server.trigger("fc", {"input": stage([step(f"s{i}") for i in range(6)],
                                                     maxParallel=2)})

    async def waiting():
        found = [s for s in await server.steps(run["id"]) if s["waitReason"]]
        return found[0] if found else None

    held = await server.wait_for(waiting, what="a step waiting for maxParallel")
    assert held["waitReason"] == {"reason": "stage_limit", "limit": 2, "stage": "work"}
    assert held["maxParallel"] == 2
    await finish_all(server, [run["id"]])
    spans = intervals(out)
    assert len(spans) == 6 and most_overlapping(spans) == 2


async def test_a_pool_is_shared_by_every_flow_and_never_exceeded(maxq, tmp_path):
    server = await maxq.start(env={"MAXQ_POOLS": "db=2,gpu=1"})
    out_a = add_flow(server, tmp_path, "fa")
    out_b = add_flow(server, tmp_path, "fb", flow_yaml="pool: db\n")
    status, body = await server.get("/pools")
    assert status == 200
    assert body == {"pools": [{"name": "db", "slots": 2, "used": 0, "waiting": 0},
                              {"name": "gpu", "slots": 1, "used": 0, "waiting": 0}]}
    a = await server.trigger("fa", {"input": stage(
        [step(f"s{i}", pool="db") for i in range(3)] + [step("big", pool="db", poolSlots=2)])})
    # Flow fb's steps take the pool from flow.yaml.
    b = await server.trigger("fb", {"input": stage([step(f"s{i}") for i in range(3)])})

    async def waiting():
        for run_id in (a["id"], b["id"]):
            for s in await server.steps(run_id):
                if s["waitReason"] and s["waitReason"]["reason"] == "pool":
                    return s
        return None

    held = await server.wait_for(waiting, what="a step waiting for the pool")
    assert held["pool"] == "db" and held["waitReason"]["pool"] == "db"
    _, body = await server.get("/pools")
    db = body["pools"][0]
    assert db["used"] <= 2 and db["waiting"] >= 1
    await finish_all(server, [a["id"], b["id"]])
    spans = intervals(out_a) + intervals(out_b)
    assert len(spans) == 7
    # Used slots at any moment, the two-slot step counting twice.
    weighted = [sp for sp in spans] + [sp for sp in spans if sp[3] == "big"]
    assert most_overlapping(weighted) <= 2
    assert {s["pool"] for s in await server.steps(b["id"])} == {"db"}


async def test_pool_routes(maxq, tmp_path):
    server = await maxq.start()
    add_flow(server, tmp_path, pause="30")
    status, body = await server.request("PUT", "/pools/db", {"slots": 1})
    assert status == 200 and body == {"name": "db", "slots": 1, "used": 0, "waiting": 0}
    status, body = await server.request("PUT", "/pools/db", {"slots": 3})
    assert status == 200 and body["slots"] == 3
    for bad in ({"slots": -1}, {"slots": "2"}, {"slots": True}, {}, {"slots": 1, "x": 2}, [1]):
        status, body = await server.request("PUT", "/pools/db", bad)
        assert status == 400 and body["code"] == "VALIDATION_ERROR", (bad, body)
    status, body = await server.request("PUT", "/pools/db", raw=b"null")
    assert status == 400 and body["code"] == "VALIDATION_ERROR", body
    status, body = await server.request("PUT", "/pools/bad%20name", {"slots": 1})
    assert status == 400
    run = await server.trigger("fc", {"input": stage([step("a", pool="db")])})
    await server.wait_step(run["id"], "a", {"running"})
    status, body = await server.request("DELETE", "/pools/db")
    assert status == 409 and body["code"] == "POOL_IN_USE"
    status, body = await server.post(f"/runs/{run['id']}/abort")
    assert status == 200
    await server.wait_run(run["id"])
    status, body = await server.request("DELETE", "/pools/db")
    assert status == 200
    status, body = await server.request("DELETE", "/pools/db")
    assert status == 404 and body["code"] == "POOL_NOT_FOUND"
    _, body = await server.get("/pools")
    assert body == {"pools": []}


async def test_an_unknown_pool_is_refused_and_changes_nothing(maxq, tmp_path):
    server = await maxq.start()
    server.flows.add("hold", "sleep 30\n", steps={"timed": "exit 0"})
    run = await server.trigger("hold")
    await server.wait_run(run["id"], {"running"})
    status, body = await server.post(f"/runs/{run['id']}/steps", {
        "stage": "work", "final": True, "steps": [step("a", pool="nope")]})
    assert status == 400 and body["code"] == "UNKNOWN_POOL"
    assert body["details"]["pool"] == "nope"
    assert await server.steps(run["id"]) == []
    for bad in ({"pool": "a b"}, {"poolSlots": 0}, {"priority": 101}, {"priority": 1.5},
                {"requires": "gpu"}, {"requires": [1]}, {"continueOnFailure": "yes"}):
        status, body = await server.post(f"/runs/{run['id']}/steps", {
            "stage": "work", "final": True, "steps": [step("a", **bad)]})
        assert status == 400 and body["code"] == "VALIDATION_ERROR", (bad, body)
    status, body = await server.post(f"/runs/{run['id']}/steps", {
        "stage": "work", "final": True, "maxParallel": 0, "steps": [step("a")]})
    assert status == 400 and body["code"] == "VALIDATION_ERROR"
    status, body = await server.post("/flows/hold/runs", {"priority": 500})
    assert status == 400 and body["code"] == "VALIDATION_ERROR"
    await server.post(f"/runs/{run['id']}/abort")


async def test_higher_priority_steps_are_claimed_first(maxq, tmp_path):
    server = await maxq.start(max_concurrent_steps=1)
    out = add_flow(server, tmp_path, pause="0.05")
    hold = await server.trigger("fc", {"input": stage([step("first", env={"PAUSE": "0.5"})])})
    await server.wait_step(hold["id"], "first", {"running"})
    run = await server.trigger("fc", {"input": stage([
        step("low", priority=-5), step("mid"), step("high", priority=50),
        step("mid2")])})
    await finish_all(server, [hold["id"], run["id"]])
    order = [s for _start, _end, r, s in sorted(intervals(out)) if r == run["id"]]
    assert order == ["high", "mid", "mid2", "low"]
    steps = {s["id"]: s for s in await server.steps(run["id"])}
    assert steps["high"]["priority"] == 50 and steps["mid"]["priority"] == 0


async def test_steps_take_the_runs_priority_from_flow_yaml(maxq, tmp_path):
    server = await maxq.start()
    add_flow(server, tmp_path, flow_yaml="priority: 7\n", pause="0")
    run = await server.trigger("fc", {"input": stage([step("a"), step("b", priority=-1)])})
    assert run["priority"] == 7
    await finish_all(server, [run["id"]])
    steps = {s["id"]: s["priority"] for s in await server.steps(run["id"])}
    assert steps == {"a": 7, "b": -1}
    run = await server.trigger("fc", {"input": stage([step("a")]), "priority": -3})
    assert run["priority"] == -3


async def test_requires_waits_for_a_server_with_every_label(maxq, tmp_path):
    server = await maxq.start()
    out = add_flow(server, tmp_path, pause="0")
    run = await server.trigger("fc", {"input": stage([step("gpu", requires=["gpu"]),
                                                      step("plain")])})
    held = await server.wait_for(
        lambda: _step_with_wait(server, run["id"], "gpu"), what="no_worker")
    assert held["waitReason"] == {"reason": "no_worker", "requires": ["gpu"]}
    assert held["requires"] == ["gpu"]
    await server.wait_step(run["id"], "plain", {"completed"})
    status, body = await server.post(f"/runs/{run['id']}/abort")
    assert status == 200
    labelled = await maxq.start(env={"MAXQ_WORKER_LABELS": "gpu,big"})
    add_flow(labelled, tmp_path, pause="0")
    run = await labelled.trigger("fc", {"input": stage([step("gpu", requires=["gpu"])])})
    await finish_all(labelled, [run["id"]])
    assert [s for *_, r, s in intervals(out) if r == run["id"]] == ["gpu"]


async def _step_with_wait(server, run_id, step_id):
    _, s = await server.get(f"/runs/{run_id}/steps/{step_id}")
    return s if s.get("waitReason") else None


async def test_server_limit_is_the_reason_when_the_server_is_full(maxq, tmp_path):
    server = await maxq.start(max_concurrent_steps=1, env={"MAXQ_POOLS": "wide=10"})
    add_flow(server, tmp_path, pause="0.4")
    run = await server.trigger("fc", {"input": stage(
        [step(f"s{i}", pool="wide") for i in range(3)])})

    async def waiting():
        found = [s for s in await server.steps(run["id"]) if s["waitReason"]]
        return found[0] if found else None

    held = await server.wait_for(waiting, what="server_limit")
    assert held["waitReason"] == {"reason": "server_limit", "limit": 1}
    await finish_all(server, [run["id"]])


CONTINUE_FLOW = """
if [ -z "$MAXQ_COMPLETED_STAGE" ] && [ -z "${MAXQ_FAILED_STAGE:-}" ]; then
  curl -sS --fail-with-body -H 'Content-Type: application/json' \\
    -X POST "$MAXQ_API/runs/$MAXQ_RUN_ID/steps" -d '{"stage": "work", "final": true,
    "steps": [{"id": "flaky", "name": "fail", "maxRetries": 1, "continueOnFailure": true},
              {"id": "after", "name": "ok", "maxRetries": 0, "dependsOn": ["flaky"]}]}' \\
    >/dev/null
fi
"""


async def test_continue_on_failure_lets_dependents_run_and_the_stage_complete(maxq):
    server = await maxq.start()
    server.flows.add("cof", CONTINUE_FLOW, steps={"fail": "exit 3", "ok": "exit 0"})
    run = await server.trigger("cof")
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    assert run["stages"][0]["status"] == "completed"
    steps = {s["id"]: s for s in await server.steps(run["id"])}
    assert steps["flaky"]["status"] == "failed"
    assert steps["flaky"]["allowedFailure"] is True
    assert steps["flaky"]["retryCount"] == 1
    assert steps["flaky"]["continueOnFailure"] is True
    assert steps["after"]["status"] == "completed"
    assert steps["after"]["allowedFailure"] is False


INPUT_FLOW = """
if [ -z "$MAXQ_COMPLETED_STAGE" ] && [ -z "${MAXQ_FAILED_STAGE:-}" ]; then
  . "$MAXQ_LIB"
  maxq_schedule work --final "$(maxq_step fetch fetch
    maxq_step mid ok deps=fetch
    maxq_step use use deps=mid input.PRICES=fetch.prices input.FIRST=fetch.prices.list.0 \\
      input.WHO=input.who.name input.LABEL=fetch.label)" >/dev/null
fi
"""


async def test_inputs_reach_the_step_as_env(maxq, tmp_path):
    server = await maxq.start()
    out = tmp_path / "env"
    server.flows.add("inp", INPUT_FLOW, steps={
        "fetch": """. "$MAXQ_LIB"
                    maxq_set_fields '{"prices": {"list": [3, 4], "x": "y"}, "label": "a b"}'
                 """,
        "ok": "exit 0",
        "use": f'printf "%s\\n%s\\n%s\\n%s\\n" "$PRICES" "$FIRST" "$WHO" "$LABEL" > "{out}"\n',
    })
    run = await server.trigger("inp", {"input": {"who": {"name": "ann"}}})
    run = await server.wait_run(run["id"])
    assert run["status"] == "completed", run
    assert out.read_text().splitlines() == [
        '{"list":[3,4],"x":"y"}', "3", "ann", "a b"]
    _, use = await server.get(f"/runs/{run['id']}/steps/use")
    assert use["inputs"]["PRICES"] == "fetch.prices"


async def test_a_missing_input_fails_the_attempt(maxq, tmp_path):
    server = await maxq.start()
    server.flows.add("inp", """
        if [ -z "$MAXQ_COMPLETED_STAGE" ] && [ -z "${MAXQ_FAILED_STAGE:-}" ]; then
          . "$MAXQ_LIB"
          maxq_schedule work --final "$(maxq_step fetch ok
            maxq_step use ok deps=fetch input.GONE=fetch.nothing)" >/dev/null
        fi
        """, steps={"ok": "exit 0"})
    run = await server.trigger("inp")
    run = await server.wait_run(run["id"])
    assert run["status"] == "failed"
    _, use = await server.get(f"/runs/{run['id']}/steps/use")
    assert use["status"] == "failed"
    assert use["error"] == {"reason": "missing_input", "input": "GONE"}


async def test_an_input_from_a_step_that_is_not_a_dependency_is_refused(maxq, tmp_path):
    server = await maxq.start()
    server.flows.add("hold", "sleep 30\n", steps={
        "timed": '. "$MAXQ_LIB"; maxq_set_field f 1'})
    run = await server.trigger("hold", {"input": {"k": 2}})
    await server.wait_run(run["id"], {"running"})
    base = {"stage": "one", "final": False}
    status, body = await server.post(f"/runs/{run['id']}/steps", {**base, "steps": [
        step("a"), step("b", inputs={"X": "a.f"})]})
    assert status == 400 and body["code"] == "INVALID_INPUT", body
    for bad in ({"1X": "a.f"}, {"LD_PRELOAD": "a.f"}, {"X": "a"}, {"X": "a..f"},
                {"X": 3}):
        status, body = await server.post(f"/runs/{run['id']}/steps", {**base, "steps": [
            step("a"), step("b", dependsOn=["a"], inputs=bad)]})
        assert status == 400 and body["code"] == "INVALID_INPUT", (bad, body)
    # Transitive dependencies, within the stage and through an earlier one.
    status, body = await server.post(f"/runs/{run['id']}/steps", {**base, "steps": [
        step("a"), step("b", dependsOn=["a"]),
        step("c", dependsOn=["b"], inputs={"X": "a.f", "Y": "input.k"})]})
    assert status == 201, body
    await server.wait_step(run["id"], "c", {"completed"})
    status, body = await server.post(f"/runs/{run['id']}/steps", {
        "stage": "two", "final": True,
        "steps": [step("d", dependsOn=["c"], inputs={"X": "a.f"})]})
    assert status == 201, body
    status, body = await server.post(f"/runs/{run['id']}/steps", {
        "stage": "three", "final": True,
        "steps": [step("e", dependsOn=["b"], inputs={"X": "c.f"})]})
    assert status == 400 and body["code"] == "INVALID_INPUT"
    await server.post(f"/runs/{run['id']}/abort")
