"""Multi-turn math and science: tools in the episode and feedback-retry, as gym.make options and family settings.

Every math and science family is played twice through the real env, sandbox and verifier: once calling the python
tool before the oracle's answer (the tool's reply arrives as a role=tool message), once answering wrong first and
then right (the user's feedback never holds the gold; the reward is discounted per retry).
"""

from __future__ import annotations

import json
import textwrap

import gymnasium as gym
import pytest

import amrsd_envs  # noqa: F401
from amrsd_envs.catalog import load_env_tasks, load_task_file
from amrsd_envs.errors import TaskSpecError
from amrsd_envs.oracle import oracle_messages

FAMILIES = sorted(f.id for f in load_env_tasks(["AMRSD-Math-v0", "AMRSD-Science-v0"]))
WRONG = "I am not sure, but my answer is \\boxed{\\text{no idea}}."


def _env(family: str, **kw):
    env_id = "AMRSD-Math-v0" if family.startswith("math.") else "AMRSD-Science-v0"
    return gym.make(env_id, families=[family], **kw)


def _tool_call(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_with_a_python_call_first_passes(family):
    env = _env(family, tools=["python", "calculator"])
    try:
        messages, info = env.reset(seed=3)
        assert [t["function"]["name"] for t in info["tools"]] == ["python", "calculator"]
        assert info["max_turns"] >= 4
        task = env.unwrapped.task
        messages, reward, terminated, truncated, step = env.step(_tool_call("python", {"code": "print(6 * 7)"}))
        assert (reward, terminated, truncated, step["tool_calls"]) == (0.0, False, False, 1)
        assert messages[-1]["role"] == "tool" and "42" in messages[-1]["content"]
        final = oracle_messages(task, env.unwrapped.catalog)[-1]
        messages, reward, terminated, truncated, step = env.step(final)
        assert terminated and not truncated and reward == 1.0, step["verification"]
    finally:
        env.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_then_right_with_retry_is_discounted_and_never_shows_the_gold(family):
    env = _env(family, max_attempts=3, retry_discount=0.5)
    try:
        messages, info = env.reset(seed=5)
        assert info["max_attempts"] == 3 and info["max_turns"] >= 3
        task = env.unwrapped.task
        messages, reward, terminated, truncated, step = env.step(WRONG)
        assert (reward, terminated, truncated, step["attempt"]) == (0.0, False, False, 1)
        assert not step["verification"].correct
        feedback = messages[-1]
        assert feedback["role"] == "user" and feedback["content"].startswith("That is not correct")
        assert task.answer not in feedback["content"]
        messages, reward, terminated, truncated, step = env.step(oracle_messages(task, env.unwrapped.catalog)[-1])
        assert terminated and reward == 0.5 and step["attempt"] == 2
    finally:
        env.close()


def test_the_last_attempt_ends_the_episode_wrong():
    env = _env("math.arithmetic", max_attempts=2)
    try:
        env.reset(seed=0)
        _, reward, terminated, _, _ = env.step(WRONG)
        assert (reward, terminated) == (0.0, False)
        _, reward, terminated, truncated, step = env.step(WRONG)
        assert (reward, terminated, truncated, step["attempt"]) == (0.0, True, False, 2)
        with pytest.raises(RuntimeError, match="no episode running"):
            env.step(WRONG)
    finally:
        env.close()


def test_science_tools_convert_units_and_lookup_run_in_the_episode():
    env = _env("science.unit_conversion", tools=["python", "calculator", "convert_units", "lookup"])
    try:
        env.reset(seed=1)
        messages, *_ = env.step(_tool_call("convert_units", {"value": 1.5, "from_unit": "km", "to_unit": "m"}))
        assert messages[-1]["role"] == "tool" and "1500" in messages[-1]["content"], messages[-1]
    finally:
        env.close()


def test_defaults_are_single_turn_without_tools():
    env = _env("math.arithmetic")
    try:
        _, info = env.reset(seed=0)
        assert (info["tools"], info["max_turns"], info["max_attempts"]) == ([], 1, 1)
    finally:
        env.close()


def test_bad_options_name_what_is_wrong():
    with pytest.raises(ValueError, match="unknown tool.*pyhton"):
        _env("math.arithmetic", tools=["pyhton"])
    with pytest.raises(ValueError, match="max_attempts"):
        _env("math.arithmetic", max_attempts=0)
    with pytest.raises(ValueError, match="retry_discount"):
        _env("math.arithmetic", retry_discount=1.5)


FAMILY_YAML = textwrap.dedent(
    """
    id: math.retry_demo
    domain: math
    tools: [python]
    max_turns: {turns}
    retry: {{max_attempts: 2, discount: 0.25}}
    generator:
      seed: 1
      count: 50
      params:
        a: {{type: int, range: [2, 40]}}
        b: {{type: int, range: [2, 40]}}
      derived:
        s: "a + b"
    prompt: "What is {{a}} + {{b}}?"
    answer: {{expr: "s"}}
    verifier: {{type: math}}
    """
)


def test_retry_is_a_family_setting(tmp_path):
    path = tmp_path / "retry_demo.yaml"
    path.write_text(FAMILY_YAML.format(turns=4))
    load_task_file(path)
    env = gym.make("AMRSD-Math-v0", tasks=str(path))
    try:
        _, info = env.reset(seed=0)
        assert info["max_attempts"] == 2 and [t["function"]["name"] for t in info["tools"]] == ["python"]
        env.step(WRONG)
        _, reward, terminated, _, _ = env.step(oracle_messages(env.unwrapped.task, env.unwrapped.catalog)[-1])
        assert terminated and reward == 0.25
    finally:
        env.close()
    path.write_text(FAMILY_YAML.format(turns=1))
    with pytest.raises(TaskSpecError, match="max_attempts.*exceeds max_turns"):
        load_task_file(path)
