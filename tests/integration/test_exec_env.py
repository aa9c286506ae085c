"""
SPEC §2 "Processes": the environment of flow.sh and step.sh, and the step
env rules.
"""

from __future__ import annotations

import os

from .exec_support import Scenario, read_env_dump, stage, step, timed

DUMP_FLOW = 'env -0 > "$OUT/flow-$key.env"'
DUMP_STEP = 'env -0 > "$OUT/$MAXQ_STEP_ID.$MAXQ_ATTEMPT.env"'


@timed(30)
async def test_flow_environment(maxq, monkeypatch):
    monkeypatch.setenv("EXEC_TEST_INHERITED", "inherited value")
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={
            "start": stage("s1", [step("a", "ok")]),
            "done-s1": stage("s2", [step("b", "bad")], final=True),
            "failed-s2": stage("s3", [step("c", "ok")], final=True),
        },
        steps={"ok": "true", "bad": "finish 1"},
        pre=DUMP_FLOW,
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    first = read_env_dump(sc.out / "flow-start.env")
    assert first["MAXQ_RUN_ID"] == run["id"]
    assert first["MAXQ_FLOW_NAME"] == "f"
    assert first["MAXQ_API"] == server.api
    assert first["MAXQ_COMPLETED_STAGE"] == ""
    assert "MAXQ_FAILED_STAGE" not in first
    assert "MAXQ_TOKEN" not in first
    assert first["PATH"] == os.environ["PATH"]
    assert first["HOME"] == os.environ["HOME"]
    assert first["EXEC_TEST_INHERITED"] == "inherited value"
    assert os.path.isfile(first["MAXQ_LIB"])
    # Flow-only: no step variables.
    assert "MAXQ_STEP_ID" not in first

    second = read_env_dump(sc.out / "flow-done-s1.env")
    assert second["MAXQ_COMPLETED_STAGE"] == "s1"
    assert "MAXQ_FAILED_STAGE" not in second
    assert second["MAXQ_RUN_ID"] == run["id"]

    third = read_env_dump(sc.out / "flow-failed-s2.env")
    assert third["MAXQ_FAILED_STAGE"] == "s2"
    assert third["MAXQ_COMPLETED_STAGE"] == "s1"


@timed(30)
async def test_step_environment(maxq, monkeypatch):
    monkeypatch.setenv("EXEC_TEST_INHERITED", "from the server")
    server = await maxq.start()
    odd = "spaces and 'quotes' \"double\" $dollar `tick` \\ back\nnewline = equals"
    sc = Scenario(server).setup(
        plan={
            "start": stage("first", [step("pre", "dump")]),
            "done-first": stage("second", [
                step("w0", "dump", env={"SHARD": "0", "ODD": odd}),
                step("w1", "dump", env={"SHARD": "1", "PATH_EXTRA": "x"}),
                step("flaky", "flaky_dump", max_retries=1),
            ], final=True),
        },
        steps={"dump": DUMP_STEP,
               "flaky_dump": DUMP_STEP + '\n[ "$MAXQ_ATTEMPT" = 1 ] && finish 1'},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    w0 = read_env_dump(sc.out / "w0.1.env")
    w1 = read_env_dump(sc.out / "w1.1.env")
    pre = read_env_dump(sc.out / "pre.1.env")
    for env, step_id, stage_name in ((w0, "w0", "second"), (w1, "w1", "second"),
                                     (pre, "pre", "first")):
        assert env["MAXQ_RUN_ID"] == run["id"]
        assert env["MAXQ_STEP_ID"] == step_id
        assert env["MAXQ_STEP_NAME"] == "dump"
        assert env["MAXQ_FLOW_NAME"] == "f"
        assert env["MAXQ_STAGE"] == stage_name
        assert env["MAXQ_API"] == server.api
        assert env["MAXQ_ATTEMPT"] == "1"
        assert "MAXQ_TOKEN" not in env
        assert env["PATH"] == os.environ["PATH"]
        assert env["HOME"] == os.environ["HOME"]
        assert env["EXEC_TEST_INHERITED"] == "from the server"
        assert os.path.isfile(env["MAXQ_LIB"])
        # Flow-only variables are not a step's.
        assert "MAXQ_FAILED_STAGE" not in env
    assert w0["SHARD"] == "0"
    assert w0["ODD"] == odd
    assert "PATH_EXTRA" not in w0
    assert w1["SHARD"] == "1"
    assert w1["PATH_EXTRA"] == "x"
    assert "SHARD" not in pre
    flaky1 = read_env_dump(sc.out / "flaky.1.env")
    flaky2 = read_env_dump(sc.out / "flaky.2.env")
    assert flaky1["MAXQ_ATTEMPT"] == "1"
    assert flaky2["MAXQ_ATTEMPT"] == "2"
    assert flaky2["MAXQ_STEP_NAME"] == "flaky_dump"
    step_w0 = await sc.step(run["id"], "w0")
    assert step_w0["env"] == {"SHARD": "0", "ODD": odd}


@timed(30)
async def test_step_env_may_override_inherited_variables(maxq, monkeypatch):
    monkeypatch.setenv("EXEC_TEST_INHERITED", "server")
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("s", [step("o", "dump", env={"EXEC_TEST_INHERITED": "step"})],
                             final=True)},
        steps={"dump": DUMP_STEP},
    )
    run = await sc.run()
    assert run["status"] == "completed", run
    assert read_env_dump(sc.out / "o.1.env")["EXEC_TEST_INHERITED"] == "step"


@timed(30)
async def test_token_given_to_scripts_when_auth_is_on(maxq):
    server = await maxq.start(env={"MAXQ_API_KEY": "secret-key-1"})
    sc = Scenario(server).setup(
        plan={"start": stage("s1", [step("a", "dump_and_post")], final=True)},
        steps={"dump_and_post": DUMP_STEP + """
            post_fields '{"fields": {"posted": true}}' || finish 9
        """},
        pre=DUMP_FLOW,
    )
    run = await sc.run()
    assert run["status"] == "completed", (run, sc.read("curl.log") if (sc.out / "curl.log").exists() else "")
    flow_env = read_env_dump(sc.out / "flow-start.env")
    step_env = read_env_dump(sc.out / "a.1.env")
    assert flow_env["MAXQ_TOKEN"]
    assert step_env["MAXQ_TOKEN"]
    a = await sc.step(run["id"], "a")
    assert a["fields"] == {"posted": True}


@timed(30)
async def test_forbidden_step_env_rejected_as_a_whole(maxq):
    server = await maxq.start()
    sc = Scenario(server).setup(
        plan={"start": stage("hold", [step("h", "hold")], final=True)},
        steps={"hold": 'while [ ! -e "$OUT/go" ]; do sleep 0.05; done', "ok": "true"},
    )
    run_id = await sc.trigger()
    await server.wait_step(run_id, "h", {"running"})
    bad_envs = [
        {"LD_PRELOAD": "/tmp/evil.so"},
        {"LD_LIBRARY_PATH": "/tmp"},
        {"BASH_ENV": "/tmp/evil.sh"},
        {"ENV": "/tmp/evil.sh"},
        {"BASH_FUNC_foo%%": "() { :; }"},
        {"SHELLOPTS": "xtrace"},
        {"BASHOPTS": "extglob"},
        {"PS4": "$(touch /tmp/x)"},
        {"IFS": "x"},
        {"PROMPT_COMMAND": "true"},
        {"MAXQ_STEP_ID": "spoof"},
        {"MAXQ_ANYTHING": "x"},
        {"1BAD": "x"},
        {"BAD-KEY": "x"},
        {"": "x"},
        {"GOOD": 1},
    ]
    for i, env in enumerate(bad_envs):
        body = stage(f"bad{i}", [step(f"ok{i}", "ok"), step(f"env{i}", "ok", env=env)])
        status, resp = await server.post(f"/runs/{run_id}/steps", body)
        assert status == 400, (env, status, resp)
        assert resp["code"] in ("INVALID_ENV", "VALIDATION_ERROR"), (env, resp)
        if env != {"GOOD": 1}:
            assert resp["code"] == "INVALID_ENV", (env, resp)
    assert [s["id"] for s in await server.steps(run_id)] == ["h"]
    sc.touch("go")
    run = await sc.finish(run_id)
    assert run["status"] == "completed"
    assert [s["name"] for s in run["stages"]] == ["hold"]
