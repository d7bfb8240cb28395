"""The TRL adapter (amrsd_envs.adapters.trl) and the OpenAI-style loop (amrsd_envs.adapters.openai_loop).

Fast tests run in the project's venv without TRL: tool methods (schemas, results through the env), reset, reward,
the response template, and the OpenAI loop against an in-process /v1/chat/completions (httpx.MockTransport; no real
server can be started here without vLLM). The `slow` test trains two steps of a real `trl.GRPOTrainer` inside TRL's
own venv (bench/.venv-trl, see bench/trl_env.py) through the adapter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import httpx
import pytest

import amrsd_envs  # noqa: F401
from amrsd_envs.adapters.openai_loop import run_episode, to_action, tool_calls_of
from amrsd_envs.adapters.trl import (
    HERMES_RESPONSE_TEMPLATE,
    AMRSDToolEnvironment,
    amrsd_reward,
    make_environment_factory,
    prepare_tokenizer,
    task_rows,
)
from amrsd_envs.oracle import OraclePolicy, oracle_messages
from amrsd_envs.toolcalls import parse_tool_calls
from amrsd_envs.tools import get_tool

REPO = Path(__file__).resolve().parents[1]
ENV_ID = "AMRSD-ToolUse-v0"
CALC = ["tooluse.calc_arith"]


@pytest.fixture(scope="module")
def tooluse_env_cls():
    return make_environment_factory(ENV_ID)


@pytest.fixture(scope="module")
def calc_env_cls():
    return make_environment_factory(ENV_ID, CALC)


# ------------------------------------------------------------------ import hygiene


def test_adapters_import_neither_trl_nor_torch():
    code = ("import sys, amrsd_envs.adapters.trl, amrsd_envs.adapters.openai_loop; "
            "print(sorted(m for m in ('trl', 'torch', 'datasets', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ tool methods


def test_public_methods_are_the_families_tools_and_reset(tooluse_env_cls, calc_env_cls):
    import inspect

    def public(cls):  # what TRL's GRPOTrainer lists: functions on the class, not starting with "_"
        return sorted(n for n, _ in inspect.getmembers(cls, predicate=inspect.isfunction) if not n.startswith("_"))

    assert public(calc_env_cls) == ["calculator", "reset"]
    assert public(tooluse_env_cls) == sorted(["calculator", "convert_units", "http_request", "lookup", "python",
                                              "reset", "sql"])
    assert "get_reward" not in public(tooluse_env_cls)  # the reward needs the final answer: amrsd_reward


def _schema_types(schema):
    if "anyOf" in schema:
        return {t for s in schema["anyOf"] for t in _schema_types(s)}
    return {schema["type"]} if "type" in schema else set()


def test_tool_schemas_from_get_json_schema_match_the_project_schemas(tooluse_env_cls):
    from transformers.utils import get_json_schema

    env = tooluse_env_cls()
    for name in tooluse_env_cls.tool_names:
        ours = get_json_schema(getattr(env, name))["function"]
        theirs = get_tool(name).schema()["function"]
        assert ours["name"] == theirs["name"] == name
        assert ours["description"] == " ".join(theirs["description"].split())
        params, ref = ours["parameters"], theirs["parameters"]
        assert list(params["properties"]) == list(ref["properties"])
        assert sorted(params.get("required", [])) == sorted(ref.get("required", []))
        for prop, sub in params["properties"].items():
            want = ref["properties"][prop]
            assert sub["description"] == " ".join(want["description"].split())
            got = _schema_types(sub) | ({"null"} if sub.get("nullable") else set())
            assert got == _schema_types(want), (name, prop, sub, want)
            assert sub.get("enum") == want.get("enum")


def test_tool_call_runs_in_the_episode_env_and_matches_a_direct_step(calc_env_cls):
    row = task_rows(ENV_ID, CALC, n=1)[0]
    env = calc_env_cls()
    assert env.reset(**row) is None and env.task_id == row["task_id"]
    expression = row["prompt"][1]["content"].removeprefix("Use the calculator to compute ").rstrip(".")
    got = env.calculator(expression=expression)
    direct = gym.make(ENV_ID, families=CALC)
    direct.reset(options={"task_id": row["task_id"]})
    obs = direct.step(f'<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "{expression}"}}}}\n'
                      "</tool_call>")[0]
    assert got == obs[-1]["content"] and env.messages == obs  # same result, same transcript as the env's own
    assert env.tool_calls == 1 and env.totals["tool_calls"] == 1
    assert env.calculator(expression="1 +").startswith("error:")  # the tool's own errors come back as text
    assert env.calculator(nonsense=1).startswith("error: invalid arguments")  # and the env's validation


def test_oracle_through_the_adapter_solves_every_tooluse_family(tooluse_env_cls):
    env = tooluse_env_cls()
    catalog = env.env.unwrapped.catalog
    for family in catalog:
        task_id = next(iter(family.indices("train")))
        task = family.instance(task_id)
        assert env.reset(task_id=task.id, prompt=task.messages()) is None
        *steps, final = oracle_messages(task, catalog)
        for text in steps:
            for call in parse_tool_calls(text).calls:
                assert not getattr(env, call.name)(**call.arguments).startswith("error"), (task.id, call)
        assert amrsd_reward([[{"role": "assistant", "content": final}]], [env]) == [1.0], task.id
        assert env.episodes[-1]["correct"] and env.episodes[-1]["verified"] and env.done


def test_reset_checks_the_rows_prompt_and_samples_without_a_task_id(calc_env_cls):
    rows = task_rows(ENV_ID, CALC, n=2)
    assert [r["task_id"] for r in rows] == ["tooluse.calc_arith/00000", "tooluse.calc_arith/00001"]
    env = calc_env_cls()
    with pytest.raises(ValueError, match="not task"):
        env.reset(task_id=rows[0]["task_id"], prompt=rows[1]["prompt"])
    text = env.reset(prompt=[{"role": "user", "content": ""}])  # TRL without a dataset: the env owns the task
    assert text.startswith("Solve the task") and "Use the calculator to compute" in text
    other = calc_env_cls()  # instances are seeded seed+k on their first reset: different, reproducible tasks
    assert other.reset() != text


def test_reward_edge_cases(calc_env_cls):
    row = task_rows(ENV_ID, CALC, n=1)[0]
    env = calc_env_cls()
    assert amrsd_reward([[]], [env]) == [0.0]  # no episode running: nothing to verify
    env.reset(**row)
    tool_turn = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {}}]}
    assert amrsd_reward([[tool_turn]], [env]) == [0.0]  # the rollout ended on a tool call (TRL's limits)
    assert env.episodes[-1]["truncated"] and not env.episodes[-1]["verified"]
    env.reset(**row)
    assert amrsd_reward([[{"role": "assistant", "content": "\\boxed{1}"}]], [env]) == [0.0]
    assert env.episodes[-1]["verified"] and env.episodes[-1]["extracted"] == "1"
    env.reset(**row)
    for _ in range(3):  # calc_arith allows 3 turns: the third tool turn truncates the episode
        env.calculator(expression="2*3")
    assert env.done and env.episodes[-1]["truncated"]
    assert env.calculator(expression="2*3").startswith("error: not run")
    assert amrsd_reward([[{"role": "assistant", "content": "\\boxed{6}"}]], [env]) == [0.0]
    assert amrsd_reward(["plain text"], [object()]) == [None]  # not ours: TRL ignores this function there
    more = make_environment_factory(ENV_ID, CALC, max_turns=5)()
    more.reset(**row)
    for _ in range(3):
        more.calculator(expression="2*3")
    assert not more.done


def test_hermes_response_template_parses_tool_calls():
    from transformers.utils.chat_parsing.response_parser import parse_response

    from amrsd_train.models import chat_template

    text = ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+2"}}\n</tool_call><|im_end|>')
    msg = parse_response(text, HERMES_RESPONSE_TEMPLATE, prefix="")
    assert msg["tool_calls"] == [{"type": "function",
                                  "function": {"name": "calculator", "arguments": {"expression": "1+2"}}}]
    assert parse_response("\\boxed{3}<|im_end|>", HERMES_RESPONSE_TEMPLATE, prefix="")["content"] == "\\boxed{3}"

    class Tok:
        def __init__(self, template):
            self.chat_template = template

    assert prepare_tokenizer(Tok(chat_template("compact"))).response_template == HERMES_RESPONSE_TEMPLATE
    assert getattr(prepare_tokenizer(Tok("{{ messages }}")), "response_template", None) is None


# ------------------------------------------------------------------ OpenAI-style loop


def _mock_server(structured: bool):
    """An in-process /v1/chat/completions that answers like the oracle (needs the env to know the task)."""
    state = {"env": None, "requests": []}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        state["requests"].append(body)
        text = OraclePolicy(state["env"])(body["messages"])
        parsed = parse_tool_calls(text)
        if structured and parsed.calls:
            message = {"role": "assistant", "content": parsed.content or None, "tool_calls": [
                {"id": f"call_{len(state['requests'])}_{k}", "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for k, c in enumerate(parsed.calls)]}
        else:
            message = {"role": "assistant", "content": text}
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if parsed.calls else "stop"}]})

    client = httpx.Client(base_url="http://test/v1", transport=httpx.MockTransport(handler))

    def chat(messages, tools):
        resp = client.post("/chat/completions", json={"model": "m", "messages": messages, "tools": tools})
        return resp.json()["choices"][0]["message"]

    return state, chat


@pytest.mark.parametrize("structured", [True, False], ids=["tool_calls", "text-tool-calls"])
def test_openai_loop_drives_the_env(structured):
    env = gym.make(ENV_ID, families=["tooluse.calc_arith", "tooluse.sql_query"])
    state, chat = _mock_server(structured)
    state["env"] = env
    for seed in range(3):
        result = run_episode(env, chat, seed=seed)
        assert result.terminated and result.correct and result.reward == 1.0
        sent = state["requests"][-1]
        assert sent["tools"] == result.info.get("tools", sent["tools"]) and sent["tools"][0]["type"] == "function"
        calls = [m for m in sent["messages"] if m["role"] == "assistant" and m.get("tool_calls")]
        answers = [m for m in sent["messages"] if m["role"] == "tool"]
        assert calls and [c["id"] for m in calls for c in m["tool_calls"]] == [m["tool_call_id"] for m in answers]
        assert all("<tool_call>" not in (m["content"] or "") for m in calls)
        assert [m["content"] for m in answers] == [m["content"] for m in result.env_messages if m["role"] == "tool"]


def test_to_action_renders_structured_tool_calls():
    msg = {"role": "assistant", "content": "let me compute",
           "tool_calls": [{"id": "a", "type": "function",
                           "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}]}
    parsed = parse_tool_calls(to_action(msg))
    assert parsed.content == "let me compute" and parsed.calls[0].arguments == {"expression": "2+2"}
    assert tool_calls_of(msg)[0]["id"] == "a"
    assert parse_tool_calls(to_action({**msg, "tool_calls": [
        {"function": {"name": "calculator", "arguments": "{bad"}}]})).calls[0].arguments == {"_raw": "{bad"}
    assert to_action({"role": "assistant", "content": "\\boxed{4}"}) == "\\boxed{4}"


# ------------------------------------------------------------------ TRL: two real GRPO steps


TRL_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, warnings
    import torch
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer
    from amrsd_envs.adapters.trl import (amrsd_reward, make_dataset, make_environment_factory, prepare_tokenizer,
                                         stop_after_tool_calls)

    model_dir, out = sys.argv[1], sys.argv[2]
    families, tasks = sys.argv[4].split(","), sys.argv[5]
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    model = stop_after_tool_calls(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), tokenizer)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    Env = make_environment_factory("AMRSD-ToolUse-v0", families, tasks=tasks)
    instances = []

    def factory():  # TRL pools one instance per rollout; keep them to read what happened in the envs
        env = Env()
        instances.append(env)
        return env

    cfg = GRPOConfig(
        output_dir=os.path.join(os.path.dirname(out), "trl-output"), per_device_train_batch_size=8,
        num_generations=4, gradient_accumulation_steps=1, max_steps=2, max_completion_length=96,
        max_tool_calling_iterations=2, learning_rate=1e-4, beta=0.0, temperature=float(sys.argv[3]),
        use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=0, shuffle_dataset=False,
    )
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=cfg,
                          train_dataset=make_dataset("AMRSD-ToolUse-v0", families, n=8, tasks=Env.catalog),
                          environment_factory=factory, reward_funcs=[amrsd_reward])
    trainer.train()
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v.detach().cpu(), before[k])]
    json.dump({"episodes": [list(e.episodes) for e in instances], "totals": [e.totals for e in instances],
               "log": trainer.state.log_history, "changed": changed, "n_params": len(before)}, open(out, "w"))
    """
)


def _load_trl_env():
    spec = importlib.util.spec_from_file_location("amrsd_bench_trl_env", REPO / "bench" / "trl_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trl_python() -> Path:
    trl_env = _load_trl_env()
    venv = trl_env.DEFAULT_TRL_VENV
    try:
        return trl_env.ensure_trl_venv(venv, with_envs=True)
    except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
        pytest.skip(f"cannot create or complete TRL's venv {venv} (pip cannot reach the package registry?): {exc}")


@pytest.mark.slow
def test_trl_grpo_trains_two_steps_through_the_adapter(tmp_path, tiny_calc):
    """The tiny model warm-started on `test.calc` (tests/conftest.py), so CI needs no cached model."""
    from conftest import TEST_TASKS

    python = _trl_python()
    model_dir = tiny_calc
    (tmp_path / "train.py").write_text(TRL_SCRIPT)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(REPO),
           "TRL_EXPERIMENTAL_SILENCE": "1"}
    run = subprocess.run([str(python), str(tmp_path / "train.py"), str(model_dir), str(tmp_path / "out.json"),
                          "1.2", "test.calc", TEST_TASKS], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, f"TRL side failed:\n{run.stderr[-4000:]}"
    out = json.loads((tmp_path / "out.json").read_text())
    steps = [entry for entry in out["log"] if "rewards/amrsd_reward/mean" in entry]
    assert len(steps) == 2
    # 2 steps x 8 rollouts, one pooled env instance per rollout, reset and finished once per step
    assert len(out["episodes"]) == 8 and all(len(eps) == 2 for eps in out["episodes"])
    # TRL's rewards are the envs' own: per step, the mean TRL logged equals the mean the envs recorded
    for k, entry in enumerate(steps):
        env_mean = sum(eps[k]["reward"] for eps in out["episodes"]) / len(out["episodes"])
        assert entry["rewards/amrsd_reward/mean"] == pytest.approx(env_mean, abs=1e-6)
    episodes = [e for eps in out["episodes"] for e in eps]
    print(f"model {model_dir.name}: rewards {[e['reward'] for e in episodes]}, tool calls "
          f"{[e['tool_calls'] for e in episodes]}, {len(out['changed'])}/{out['n_params']} tensors changed")
    assert any(e["verified"] for e in episodes), "no rollout reached the verifier"
    # the model called the calculator through the env (TRL counted the calls, the envs ran them)
    assert sum(t["tool_calls"] for t in out["totals"]) > 0
    assert sum(entry["tools/call_frequency"] for entry in steps) > 0
    assert sum(e["tool_calls"] for e in episodes) == sum(t["tool_calls"] for t in out["totals"])
    # and GRPO updated the weights (some group had reward variance)
    assert out["changed"], f"no weight changed; rewards per rollout: {[e['reward'] for e in episodes]}"


def test_stop_after_tool_calls_adds_the_close_tag_to_the_eos_ids():
    from types import SimpleNamespace

    from amrsd_envs.adapters.trl import stop_after_tool_calls

    tok = SimpleNamespace(convert_tokens_to_ids=lambda t: {"</tool_call>": 5}.get(t, 9), unk_token_id=9)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=2))
    assert stop_after_tool_calls(model, tok).generation_config.eos_token_id == [2, 5]
    assert stop_after_tool_calls(model, tok).generation_config.eos_token_id == [2, 5]  # once
    split = SimpleNamespace(convert_tokens_to_ids=lambda t: 9, unk_token_id=9)  # not a single token: unchanged
    other = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[2, 0]))
    assert stop_after_tool_calls(other, split).generation_config.eos_token_id == [2, 0]
