"""
The pure rules: names, env keys, stage request shape, DAG checks, backoff.
"""

import pytest

from maxq import model
from maxq.errors import Refusal


def stage(steps, **extra):
    return {"stage": "s", "final": False, "steps": steps, **extra}


def step(id, name="x", **extra):
    return {"id": id, "name": name, "maxRetries": 0, **extra}


def code_of(body, max_steps=100):
    with pytest.raises(Refusal) as e:
        model.parse_stage_request(body, max_steps, 1000)
    return e.value.code


def test_valid_name_accepts_and_rejects():
    assert model.valid_name("fetch-news_2")
    for bad in ("", "../x", "a b", "a/b", "é", None, 3, "x" * 129):
        assert not model.valid_name(bad)


def test_parse_stage_request_defaults():
    spec = model.parse_stage_request(stage([step("a")]), 10, 1000)
    assert spec.fail_fast is True
    (a,) = spec.steps
    assert (a.retry_delay_ms, a.retry_backoff, a.depends_on, a.env) == (0, 2.0, [], {})


@pytest.mark.parametrize("body", [
    [],
    {"final": False, "steps": [step("a")]},
    stage([step("a")], final="yes") | {"final": "yes"},
    {"stage": "s", "final": False, "steps": []},
    stage([{"id": "a", "name": "x"}]),
    stage([step("a", maxRetries=-1)]),
    stage([step("a", maxRetries=True)]),
    stage([step("a", dependsOn="b")]),
    stage([step("a", retryBackoff=0.5)]),
    stage([step("a", timeoutSeconds=0)]),
    stage([step("a", unknown=1)]),
    {"stage": "../s", "final": False, "steps": [step("a")]},
])
def test_parse_stage_request_validation_errors(body):
    assert code_of(body) == "VALIDATION_ERROR"


def test_parse_stage_request_specific_codes():
    assert code_of(stage([step("a b")])) == "INVALID_STEP_ID"
    assert code_of(stage([step("a", name="../evil")])) == "STEP_NOT_FOUND"
    assert code_of(stage([step("a"), step("b")]), max_steps=1) == "TOO_MANY_STEPS"


def test_dependencies_of_a_stage_are_capped_in_all():
    steps = [step("a"), step("b", dependsOn=["a"]), step("c", dependsOn=["a", "b", "a"])]
    # Three distinct edges (the repeated "a" counts once): at the limit, fine.
    spec = model.parse_stage_request(stage(steps), 10, max_dependencies=3)
    assert [s.depends_on for s in spec.steps] == [[], ["a"], ["a", "b"]]
    with pytest.raises(Refusal) as e:
        model.parse_stage_request(stage(steps), 10, max_dependencies=2)
    assert e.value.code == "TOO_MANY_DEPENDENCIES"
    assert e.value.details == {"limit": 2, "given": 3}


@pytest.mark.parametrize("key", [
    "LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_ENV", "ENV", "BASH_FUNC_x%%", "SHELLOPTS",
    "BASHOPTS", "PS4", "IFS", "PROMPT_COMMAND", "MAXQ_RUN_ID", "1X", "A-B", "",
])
def test_env_keys_rejected(key):
    assert code_of(stage([step("a", env={key: "v"})])) == "INVALID_ENV"


def test_env_values_must_be_strings():
    assert code_of(stage([step("a", env={"A": 1})])) == "INVALID_ENV"


def test_step_timeout_from_env():
    spec = model.parse_stage_request(stage([step("a", env={"MAXQ_STEP_TIMEOUT": "2.5"})]), 10,
                                     1000)
    assert spec.steps[0].timeout_seconds == 2.5
    assert code_of(stage([step("a", env={"MAXQ_STEP_TIMEOUT": "soon"})])) == "INVALID_ENV"


def specs(*pairs):
    return [model.StepSpec(id=i, name="x", max_retries=0, depends_on=list(d))
            for i, d in pairs]


def test_check_dag_accepts_diamond_and_earlier_completed():
    model.check_dag(specs(("a", ["old"]), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])),
                    {"old"})


def test_check_dag_unknown_dependency():
    with pytest.raises(Refusal) as e:
        model.check_dag(specs(("a", ["ghost"])), set())
    assert e.value.code == "UNKNOWN_DEPENDENCY"


def test_check_dag_self_and_longer_cycles():
    for steps in (specs(("a", ["a"])), specs(("a", ["c"]), ("b", ["a"]), ("c", ["b"]))):
        with pytest.raises(Refusal) as e:
            model.check_dag(steps, set())
        assert e.value.code == "DEPENDENCY_CYCLE"
        cycle = e.value.details["cycle"]
        assert cycle[0] == cycle[-1]


def test_find_cycle_handles_a_long_chain_without_recursion():
    n = 20000
    graph = {f"s{i}": [f"s{i-1}"] if i else [] for i in range(n)}
    assert model.find_cycle(graph) is None
    graph["s0"] = [f"s{n-1}"]
    assert model.find_cycle(graph) is not None


def test_retry_delay_backoff():
    assert model.retry_delay_ms(0, 2.0, 3) == 0
    assert [model.retry_delay_ms(100, 2.0, k) for k in (1, 2, 3)] == [100, 200, 400]
    assert model.retry_delay_ms(1000, 100.0, 1000) == 86_400_000
