"""The BFCL single-turn families (``tasks/datasets/bfcl_*.yaml``) and the ``bfcl_ast`` verifier.

Fast and without BFCL's venv: the data comes from the installed ``bfcl-eval`` package's files; agreement with BFCL's
own checker is asserted on the verdicts ``bench/bfcl_agreement.py --record`` wrote (``tests/data/``), and measured in
full by that script (docs/BENCHMARKS.md, "BFCL checker agreement").
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import gymnasium as gym
import pytest

import amrsd_envs
from amrsd_envs.catalog import load_tasks
from amrsd_envs.oracle import OraclePolicy, oracle_messages
from amrsd_envs.toolcalls import ToolCall, render_tool_calls
from amrsd_envs.verifiers import check
from amrsd_envs.verifiers.bfcl_ast import parse_gold, reference_calls, standardize, type_matches

VERDICTS = Path(__file__).parent / "data" / "bfcl_checker_verdicts.jsonl"
FAMILIES = {"bfcl.simple": 400, "bfcl.multiple": 200, "bfcl.parallel": 200, "bfcl.parallel_multiple": 200,
            "bfcl.live_simple": 256, "bfcl.live_multiple": 1051, "bfcl.irrelevance": 240}


@pytest.fixture(scope="module")
def catalog():
    return load_tasks(families=sorted(FAMILIES))  # the single-turn families (bfcl.multi_turn_base: its own test file)


def _calls(*calls: tuple[str, dict]) -> str:
    return render_tool_calls([ToolCall(name=n, arguments=a) for n, a in calls])


def test_families_load_from_the_installed_package(catalog, monkeypatch):
    import socket

    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("the BFCL reader used the network"))
    assert {f.id: len(f) for f in catalog} == FAMILIES
    task = catalog.get("bfcl.simple/simple_python_0")
    assert task.domain == "function_calling" and task.verifier == "bfcl_ast" and task.max_turns == 1
    tool = task.params["tools"][0]
    assert tool["type"] == "function" and tool["function"]["name"] == "calculate_triangle_area"
    assert tool["function"]["parameters"]["type"] == "object"  # BFCL's "dict", as JSON schema
    assert parse_gold(task.answer)["functions"][0]["parameters"]["type"] == "dict"  # the original kept for checking


def test_bfcl_types_become_json_schema_types(catalog):
    seen: set[str] = set()

    def walk(schema: dict) -> None:
        if "type" in schema:
            seen.add(schema["type"])
        for sub in schema.get("properties", {}).values():
            walk(sub)
        if isinstance(schema.get("items"), dict):
            walk(schema["items"])

    for fam in catalog:
        for i in range(0, len(fam), 7):
            for tool in fam.instance(i).params["tools"]:
                walk(tool["function"]["parameters"])
    assert seen <= {"object", "number", "integer", "string", "boolean", "array"}, seen


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_oracle_passes_on_every_task(catalog, family):
    fam = catalog[family]
    for i in range(len(fam)):
        task = fam.instance(i)
        verdict = check("bfcl_ast", task.answer, oracle_messages(task, catalog)[-1])
        assert verdict.correct, (task.id, verdict.feedback)


SIMPLE = "bfcl.simple/simple_python_0"  # calculate_triangle_area(base=10, height=5, unit="units" or left out)


@pytest.mark.parametrize("response, kind", [
    (_calls(("calculate_triangle_area", {"base": 10, "height": 5})), None),
    (_calls(("calculate_triangle_area", {"base": 10, "height": 5, "unit": "Units"})), None),  # normalised
    (_calls(("triangle_area", {"base": 10, "height": 5})), "wrong_function"),
    (_calls(("calculate_triangle_area", {"base": 10})), "missing_required"),
    (_calls(("calculate_triangle_area", {"base": 10, "height": 5, "color": "red"})), "unexpected_param"),
    (_calls(("calculate_triangle_area", {"base": "10", "height": 5})), "wrong_type"),
    (_calls(("calculate_triangle_area", {"base": True, "height": 5})), "wrong_type"),  # a bool is not an int
    (_calls(("calculate_triangle_area", {"base": 11, "height": 5})), "wrong_value"),
    (_calls(("calculate_triangle_area", {"base": 10, "height": 5}), ("calculate_triangle_area",
                                                                     {"base": 10, "height": 5})), "wrong_count"),
    ("The area is 25.", "no_call"),
])
def test_each_rule_on_a_simple_task(catalog, response, kind):
    from amrsd_envs.verifiers.bfcl_ast import match_calls
    from amrsd_envs.toolcalls import parse_tool_calls

    task = catalog.get(SIMPLE)
    mismatch = match_calls(parse_gold(task.answer), [(c.name, c.arguments) for c in parse_tool_calls(response).calls])
    assert (mismatch.kind if mismatch else None) == kind
    assert check("bfcl_ast", task.answer, response).correct == (kind is None)


def test_int_is_accepted_for_a_float_and_optional_left_out():
    gold = json.dumps({"match": "one", "functions": [{"name": "f", "parameters": {"type": "dict", "properties": {
        "x": {"type": "float"}, "opt": {"type": "integer"}, "xs": {"type": "array", "items": {"type": "float"}}},
        "required": ["x"]}}], "ground_truth": [{"f": {"x": [2.0], "opt": ["", 3], "xs": ["", [1.5, 2.0]]}}]})
    assert check("bfcl_ast", gold, _calls(("f", {"x": 2}))).correct  # int -> float, optional params left out
    assert check("bfcl_ast", gold, _calls(("f", {"x": 2.0, "opt": 3, "xs": [1.5, 2.0]}))).correct
    assert not check("bfcl_ast", gold, _calls(("f", {"x": 2.0, "opt": 4}))).correct
    # item types are checked against each allowed list, without int -> float; as in BFCL, an allowed "" (left out)
    # satisfies the item check, so only a gold without it rejects [1.5, 2]
    strict = gold.replace('"xs": ["", [1.5, 2.0]]', '"xs": [[1.5, 2.0]]')
    assert check("bfcl_ast", gold, _calls(("f", {"x": 2.0, "xs": [1.5, 2]}))).correct
    assert not check("bfcl_ast", strict, _calls(("f", {"x": 2.0, "xs": [1.5, 2]}))).correct
    assert check("bfcl_ast", strict, _calls(("f", {"x": 2.0, "xs": [1.5, 2.0]}))).correct


def test_nested_dict_and_list_values():
    gold = json.dumps({"match": "one", "functions": [{"name": "q", "parameters": {"type": "dict", "properties": {
        "where": {"type": "dict"}, "rows": {"type": "array", "items": {"type": "dict"}}}, "required": ["where"]}}],
        "ground_truth": [{"q": {"where": [{"city": ["New York", "NYC"], "limit": ["", 10]}],
                                "rows": ["", [{"id": [1]}, {"id": [2]}]]}}]})
    assert check("bfcl_ast", gold, _calls(("q", {"where": {"city": "nyc"}}))).correct
    assert check("bfcl_ast", gold, _calls(("q", {"where": {"city": "New York", "limit": 10},
                                                  "rows": [{"id": 1}, {"id": 2}]}))).correct
    assert not check("bfcl_ast", gold, _calls(("q", {"where": {"city": "Boston"}}))).correct
    assert not check("bfcl_ast", gold, _calls(("q", {"where": {"city": "NYC", "zip": "1"}}))).correct
    assert not check("bfcl_ast", gold, _calls(("q", {"where": {"city": "NYC"}, "rows": [{"id": 2}, {"id": 1}]}))).correct


def test_standardize_and_type_rules():
    assert standardize("April 1, 2024") == standardize("april 1 2024") == "april12024"
    assert standardize("it's") == 'it"s'
    assert type_matches(True, [1], int, None) == (False, False)
    assert type_matches("x", [1], int, None) == (False, False)
    assert type_matches("var_name", ["var_name"], int, None) == (True, True)  # BFCL's variable case


def test_parallel_calls_match_in_any_order(catalog):
    task = catalog.get("bfcl.parallel/parallel_0")
    calls = reference_calls(task.answer)
    assert len(calls) >= 2
    assert check("bfcl_ast", task.answer, _calls(*calls)).correct
    assert check("bfcl_ast", task.answer, _calls(*calls[::-1])).correct
    assert not check("bfcl_ast", task.answer, _calls(*calls[:-1])).correct
    assert not check("bfcl_ast", task.answer, _calls(*calls, calls[0])).correct


def test_irrelevance_is_right_only_without_a_call(catalog):
    task = catalog.get("bfcl.irrelevance/irrelevance_0")
    name = parse_gold(task.answer)["functions"][0]["name"]
    assert check("bfcl_ast", task.answer, "None of these functions can answer that.").correct
    verdict = check("bfcl_ast", task.answer, _calls((name, {})))
    assert not verdict.correct and "without calling" in verdict.feedback
    assert not check("bfcl_ast", task.answer, '<tool_call>\n{"name": oops}\n</tool_call>').correct  # an attempt


def test_malformed_call_is_wrong_and_no_call_has_no_answer(catalog):
    task = catalog.get(SIMPLE)
    broken = check("bfcl_ast", task.answer, '<tool_call>\n{"name": "calculate_triangle_area", "arguments": }\n'
                                            "</tool_call>")
    assert not broken.correct and "could not be parsed" in broken.feedback
    assert check("bfcl_ast", task.answer, "I would compute it by hand.").extracted is None


def _gold_strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _gold_strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _gold_strings(v)]
    return []


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bfcl_agreement", Path(__file__).parents[1] / "bench" /
                                                  "bfcl_agreement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_feedback_never_reveals_an_allowed_value(catalog):
    mutations = _bench_module()  # the agreement bench's mutation classes

    for fam in catalog:
        for i in range(0, len(fam), 25):
            task = fam.instance(i)
            gold = parse_gold(task.answer)
            names = {f["name"] for f in gold["functions"]} | {
                p for f in gold["functions"] for p in f["parameters"].get("properties", {})}
            secrets = {s for s in _gold_strings(gold["ground_truth"]) if len(s) >= 4 and s not in names
                       and not any(s in n for n in names)}
            for name, (mutate, applies) in mutations.MUTATIONS.items():
                if applies != "any" and (applies == "irrelevance") != (gold["match"] == "none"):
                    continue
                calls = mutate(gold, reference_calls(task.answer), random.Random(task.id))
                if calls is None:
                    continue
                feedback = check("bfcl_ast", task.answer, _calls(*calls) if calls else "no").feedback
                leaked = [s for s in secrets if s.lower() in feedback.lower()]
                assert not leaked, (task.id, name, feedback, leaked)


def _recorded() -> list[dict]:
    lines = VERDICTS.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert header["generated_by"].startswith(".venv/bin/python bench/bfcl_agreement.py --record")
    rows = [json.loads(line) for line in lines[1:]]
    assert len(rows) == header["responses"]
    return rows


def test_agrees_with_bfcls_checker_on_every_recorded_verdict(catalog):
    rows = _recorded()
    assert {r["mutation"] for r in rows} >= {"oracle", "wrong_function", "missing_required", "extra_arg",
                                             "wrong_type", "wrong_value", "reordered_parallel", "no_call",
                                             "call_on_irrelevance", "int_for_float", "optional_left_out"}
    assert {r["bfcl_valid"] for r in rows} == {True, False}
    disagree = [(r["task_id"], r["mutation"]) for r in rows
                if check("bfcl_ast", catalog.get(r["task_id"]).answer, r["text"]).correct != r["bfcl_valid"]]
    assert not disagree


def test_env_episode_end_to_end():
    assert "AMRSD-BFCL-v0" in amrsd_envs.ENV_IDS
    env = gym.make("AMRSD-BFCL-v0", families=["bfcl.simple"])
    messages, info = env.reset(options={"task_id": "bfcl.simple/simple_python_1"})
    assert [m["role"] for m in messages] == ["system", "user"] and "factorial of 5" in messages[1]["content"]
    assert [t["function"]["name"] for t in info["tools"]] == ["math.factorial"]
    info["tools"][0]["function"]["name"] = "changed"  # the caller's copy
    call = '<tool_call>\n{"name": "math.factorial", "arguments": {"number": 5}}\n</tool_call>'
    messages, reward, terminated, truncated, info = env.step(call)
    assert (reward, terminated, truncated, info["correct"]) == (1.0, True, False, True)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]  # nothing was executed
    _, info = env.reset(options={"task_id": "bfcl.simple/simple_python_1"})
    assert info["tools"][0]["function"]["name"] == "math.factorial"
    messages, reward, terminated, truncated, info = env.step(call.replace("5", "6"))
    assert reward == 0.0 and terminated and "wrong value" in info["verification"].feedback
    env.close()


def test_env_retry_feedback_and_oracle_policy():
    env = gym.make("AMRSD-BFCL-v0", families=["bfcl.parallel"], max_attempts=2)
    policy = OraclePolicy(env)
    messages, info = env.reset(seed=3)
    messages, reward, terminated, truncated, info = env.step("no calls")
    assert not terminated and messages[-1]["role"] == "user" and "boxed" not in messages[-1]["content"]
    messages, reward, terminated, truncated, info = env.step(policy(messages, info.get("tools")))
    assert terminated and reward == 0.5 and info["correct"]
    env.close()


def test_eval_reports_bfcl_style_accuracy():
    from amrsd_envs.cli import eval_main
    from amrsd_envs.evaluate import bfcl_scores, evaluate

    report = evaluate("AMRSD-BFCL-v0", "oracle", n_tasks=14, env_kwargs={"families": sorted(FAMILIES)}, progress=False)
    scores = bfcl_scores(report)
    assert set(scores) == {*(f.removeprefix("bfcl.") for f in FAMILIES), "non_live_ast", "live_ast"}
    assert all(v == 1.0 for v in scores.values())
    assert eval_main(["--env", "AMRSD-BFCL-v0", "--families", "bfcl.simple", "bfcl.irrelevance",
                      "--n-tasks", "4"]) == 0


def test_function_calling_family_without_system_gets_the_domain_default(tmp_path):
    """A function-calling family may leave out ``system``: it gets ``DEFAULT_SYSTEM["function_calling"]``."""
    from amrsd_envs.builders import DEFAULT_SYSTEM

    spec = (Path(amrsd_envs.__file__).parent.parent / "tasks" / "datasets" / "bfcl_simple.yaml").read_text()
    start = spec.index("\nsystem:")
    end = spec.index("\nverifier:")
    (tmp_path / "bfcl_simple_default.yaml").write_text(spec[:start] + spec[end:])
    task = load_tasks(tmp_path).get("bfcl.simple/simple_python_1")
    assert task.system == DEFAULT_SYSTEM["function_calling"]
    assert task.messages()[0] == {"role": "system", "content": DEFAULT_SYSTEM["function_calling"]}


REAL_ANSWERS = Path(__file__).parent / "data" / "bfcl_smollm2_responses.jsonl"


def test_real_model_answers_are_judged_as_recorded_and_as_bfcl_judged_them(catalog):
    """SmolLM2-135M-Instruct's greedy answers (``bench/bfcl_smollm2.py``): ``bfcl_ast`` gives each the verdict the
    file records (the accuracy in README.md), and BFCL's checker's verdict on every one is in the recorded set."""
    answers = [json.loads(line) for line in REAL_ANSWERS.read_text(encoding="utf-8").splitlines()]
    assert {a["family"] for a in answers} == {"bfcl.simple", "bfcl.multiple"} and len(answers) >= 200
    assert all(check("bfcl_ast", catalog.get(a["task_id"]).answer, a["text"]).correct == a["correct"]
               for a in answers)
    recorded = {(r["task_id"], r["text"]) for r in _recorded() if r["mutation"] == f"real:{answers[0]['model']}"}
    assert {(a["task_id"], a["text"]) for a in answers} <= recorded
