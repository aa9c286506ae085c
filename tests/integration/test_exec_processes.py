"""
SPEC §2 "Processes": cwd, stdin, output capture and its limit, process
groups, and nothing outside the flows root is executed.
"""

from __future__ import annotations

import os

from .exec_support import Scenario, settle, stage, step, timed


@timed(30)
async def test_cwd_is_flow_dir_and_step_dir(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("w", "where")], final=True)},
        steps={"where": 'pwd -P > "$OUT/step.cwd"'},
        pre='pwd -P > "$OUT/flow.cwd"',
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    assert sc.read("flow.cwd").strip() == str(sc.flow_dir.resolve())
    assert sc.read("step.cwd").strip() == str((sc.flow_dir / "steps" / "where").resolve())


STDIN_CHECK = """
if [ -t 0 ]; then echo tty; else echo notty; fi > "$OUT/$1.stdin"
readlink /proc/$$/fd/0 >> "$OUT/$1.stdin"
read -r -t 2 line; echo "read=$?" >> "$OUT/$1.stdin"
timeout 5 cat > /dev/null; echo "cat=$?" >> "$OUT/$1.stdin"
"""


@timed(30)
async def test_stdin_is_dev_null(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("in", "stdin")], final=True)},
        steps={"stdin": "check_stdin() {\n" + STDIN_CHECK + "}\ncheck_stdin step"},
        pre="check_stdin() {\n" + STDIN_CHECK + "}\n[ $key = start ] && check_stdin flow",
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    for who in ("flow", "step"):
        # read returns 1 (EOF) rather than >128 (timeout); cat ends at once.
        assert sc.read(f"{who}.stdin").split() == ["notty", "/dev/null", "read=1", "cat=0"], who


@timed(30)
async def test_step_and_flow_output_captured(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [
            step("talk", "talk"),
            step("fail", "talk_fail"),
        ], final=True, failFast=False)},
        steps={
            "talk": 'echo "out of $MAXQ_STEP_ID"; echo "err of $MAXQ_STEP_ID" >&2',
            "talk_fail": 'echo "out before failing"; echo "err before failing" >&2; finish 2',
        },
        pre='echo "flow says $key"; echo "flow complains $key" >&2',
    )
    run = await sc.run()
    steps = await sc.steps_by_id(run["id"])
    assert steps["talk"]["stdout"] == "out of talk\n"
    assert steps["talk"]["stderr"] == "err of talk\n"
    assert steps["fail"]["stdout"] == "out before failing\n"
    assert steps["fail"]["stderr"] == "err before failing\n"
    # The run carries the flow's output (concatenated over its invocations).
    assert "flow says start" in run["stdout"]
    assert "flow complains start" in run["stderr"]
    assert "flow says failed-s1" in run["stdout"]
    assert "flow complains failed-s1" in run["stderr"]
    assert "flow says" not in run["stderr"]
    assert "complains" not in run["stdout"]


@timed(30)
async def test_only_last_max_log_capture_bytes_kept(maxq):
    server = await maxq.start(max_log_capture=100)
    loud = """
    head -c 900 /dev/zero | tr '\\0' {0}
    head -c 100 /dev/zero | tr '\\0' {1}
    head -c 900 /dev/zero | tr '\\0' {2} >&2
    head -c 100 /dev/zero | tr '\\0' {3} >&2
    """
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("loud", "loud")], final=True)},
        steps={"loud": loud.format(*"abcd")},
        pre=loud.format(*"efgh"),
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    s = await sc.step(run["id"], "loud")
    assert s["stdout"] == "b" * 100, s["stdout"]
    assert s["stderr"] == "d" * 100, s["stderr"]
    # One flow invocation: its tail.
    assert run["stdout"] == "f" * 100, run["stdout"]
    assert run["stderr"] == "h" * 100, run["stderr"]


@timed(30)
async def test_each_process_has_its_own_process_group(maxq):
    server = await maxq.start()
    group = """
    read -r -a stat < /proc/$$/stat
    echo "$$ ${stat[4]} ${stat[5]}" > "$OUT/$1.group"
    """
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("g1", "grp"), step("g2", "grp")], final=True)},
        steps={"grp": "g() {\n" + group + "}\ng $MAXQ_STEP_ID"},
        pre="g() {\n" + group + "}\n[ $key = start ] && g flow",
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    groups = set()
    for who in ("flow", "g1", "g2"):
        pid, pgid, sid = (int(x) for x in sc.read(f"{who}.group").split())
        assert pgid == pid, who
        assert pgid != os.getpgid(0), who
        groups.add(pgid)
    assert len(groups) == 3


@timed(30)
async def test_step_name_path_traversal_rejected(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("hold", [step("h", "hold")], final=True)},
        steps={"hold": 'while [ ! -e "$OUT/go" ]; do sleep 0.05; done'},
    )
    marker = sc.out / "escaped"
    evil = f'#!/usr/bin/env bash\necho "$0" >> "{marker}"\n'
    # Scripts that a traversing name would reach.
    server.flows.write_script(sc.flow_dir / "x" / "step.sh", evil)
    server.flows.write_script(sc.flow_dir.parent / "x" / "step.sh", evil)
    server.flows.write_script(sc.flow_dir.parent / "other" / "steps" / "s" / "step.sh", evil)
    server.flows.write_script(sc.flow_dir.parent / "other" / "flow.sh", evil)
    server.flows.write_script(sc.flow_dir.parent.parent / "x" / "step.sh", evil)

    run_id = await sc.trigger()
    await server.wait_step(run_id, "h", {"running"})
    bad_names = ["../x", "../../x", "../../other/steps/s", "..", ".", "x/../hold",
                 str(sc.flow_dir / "steps" / "hold"), "hold/", "", "ho ld", "hold\n"]
    for i, name in enumerate(bad_names):
        status, body = await server.post(f"/runs/{run_id}/steps",
                                         stage(f"evil{i}", [step(f"e{i}", name)]))
        assert status == 400, (name, status, body)
        assert body["code"] in ("VALIDATION_ERROR", "STEP_NOT_FOUND", "INVALID_STEP_ID"), body
    assert [s["id"] for s in await server.steps(run_id)] == ["h"]
    sc.touch("go")
    run = await sc.finish(run_id)
    assert run["status"] == "completed", run
    await settle(server.reactor, 0.3)
    assert not marker.exists(), marker.read_text()


@timed(30)
async def test_flow_name_path_traversal_is_not_found(maxq):
    server = await maxq.start()
    root = server.flows.root
    marker = root.parent / "escaped-flow"
    evil = f'#!/usr/bin/env bash\necho "$0" >> "{marker}"\n'
    # A flow.sh right above the flows root and one in a sibling directory.
    server.flows.write_script(root.parent / "flow.sh", evil)
    server.flows.write_script(root.parent / "sibling" / "flow.sh", evil)
    status, body = await server.post("/flows/%2E%2E/runs", {})
    assert status == 404, body
    for name in ("..", "%2E%2E", "%2e%2e", "..%2Fsibling", "%2E%2E%2Fsibling", "."):
        status, body = await server.post(f"/flows/{name}/runs", {})
        assert status == 404 and body["code"] == "FLOW_NOT_FOUND", (name, status, body)
        status, body = await server.get(f"/flows/{name}")
        assert status == 404 and body["code"] == "FLOW_NOT_FOUND", (name, status, body)
        status, body = await server.post("/runs", {"flowName": name.replace("%2F", "/")
                                                   .replace("%2E", ".").replace("%2e", ".")})
        assert status in (400, 404), (name, status, body)
    status, body = await server.post("/runs", {"flowName": "../sibling"})
    assert status in (400, 404), body
    await settle(server.reactor, 0.3)
    assert not marker.exists(), marker.read_text()
    status, body = await server.get("/runs")
    assert body["runs"] == [], body


@timed(30)
async def test_symlink_out_of_flows_root_not_executed(maxq):
    """
    A step directory or flow directory that is a symlink leading outside
    the flows root is not resolved ("nothing outside FLOWS_ROOT is ever
    resolved or executed").
    """
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("hold", [step("h", "hold")], final=True)},
        steps={"hold": 'while [ ! -e "$OUT/go" ]; do sleep 0.05; done'},
    )
    marker = sc.out / "escaped"
    evil = f'#!/usr/bin/env bash\necho "$0" >> "{marker}"\n'
    outside = sc.out / "outside"
    server.flows.write_script(outside / "steps" / "s" / "step.sh", evil)
    server.flows.write_script(outside / "flow.sh", evil)
    os.symlink(outside / "steps" / "s", sc.flow_dir / "steps" / "linked")
    os.symlink(outside, server.flows.root / "linkedflow")

    run_id = await sc.trigger()
    await server.wait_step(run_id, "h", {"running"})
    status, body = await server.post(f"/runs/{run_id}/steps",
                                     stage("evil", [step("e", "linked")]))
    assert status == 400, (status, body)
    status, body = await server.post("/flows/linkedflow/runs", {})
    assert status in (400, 404), (status, body)
    sc.touch("go")
    run = await sc.finish(run_id)
    assert run["status"] == "completed", run
    await settle(server.reactor, 0.3)
    assert not marker.exists(), marker.read_text()
