"""Warm-start data for reflection: broken attempts are really played and really wrong, hints pass the leak filter."""

from __future__ import annotations

import random

import gymnasium as gym
import pytest

from amrsd_envs.catalog import load_env_tasks
from amrsd_envs.oracle import oracle_messages
from amrsd_train import reflection
from amrsd_train.reflection_demos import STEP_HINTS, broken_attempts, hint_conditioned, play, reflection_examples
from amrsd_train.sft import collect_demonstrations

FAMILIES = ["tooluse.calc_arith", "tooluse.calc_chain"]


@pytest.fixture(scope="module")
def catalog():
    return load_env_tasks(["AMRSD-ToolUse-v0"], families=FAMILIES)


@pytest.fixture(scope="module")
def templates():
    return reflection.PromptTemplates.load()


def test_step_hints_never_state_a_value():
    for hints in STEP_HINTS.values():
        for hint in hints:
            assert not any(ch.isdigit() for ch in hint) and hint.endswith("?")


def test_broken_attempts_are_played_through_the_env_and_wrong(catalog):
    env = gym.make("AMRSD-All-v0", tasks=catalog)
    rng = random.Random(0)
    task = catalog.get(env.unwrapped.task_ids("train", 1, families=["tooluse.calc_chain"])[0])
    _, info, oracle_results = play(env, task, oracle_messages(task, catalog), None, rng)
    assert info["correct"] and len(oracle_results) == 2  # two calculator results (x, then y)
    steps = set()
    for _ in range(30):
        found = broken_attempts(env, task, catalog, 2, rng)
        if found is None:
            continue
        step, attempts = found
        steps.add(step)
        for a in attempts:
            assert not a.correct and a.answer != task.answer and "tool:" in a.transcript
            if step == "later_call":  # the slip is in the second call; the first call is the oracle's
                assert oracle_results[0] in a.transcript
    assert steps == {"first_call", "later_call", "final"}
    env.close()


def test_reflection_examples_target_a_vetted_hint_and_hide_the_gold(catalog, templates):
    env = gym.make("AMRSD-All-v0", tasks=catalog)
    ids = [t for fam in FAMILIES for t in env.unwrapped.task_ids("train", 12, families=[fam])]
    env.close()
    examples = reflection_examples(catalog, ids, seed=0, templates=templates)
    assert len(examples) >= len(ids) // 2
    for messages, tools in examples:
        assert tools == [] and [m["role"] for m in messages] == ["system", "user", "assistant"]
        target = messages[-1]["content"]
        assert target.startswith(reflection.HINT_OPEN) and target.endswith(reflection.HINT_CLOSE)
        hint = reflection.extract_hint(target)
        assert any(hint.startswith(h) for hs in STEP_HINTS.values() for h in hs)
        task = catalog.get(next(t for t in ids if catalog.get(t).prompt in messages[1]["content"]))
        assert reflection.leak_filter(target, gold=task.answer, reference=task.reference).ok
        assert f" {task.answer} " not in f" {messages[1]['content']} ".replace("\n", " ")
        assert "What a wrong attempt did: assistant:" in messages[1]["content"]


def test_hint_conditioned_solutions_use_the_teacher_template(catalog, templates):
    demos = collect_demonstrations(catalog, 2, seed=0)
    out = hint_conditioned(demos, catalog, seed=0, templates=templates)
    assert len(out) == 2 * len(demos)
    for (plain, tools), (hinted, null) in zip(demos, zip(out[0::2], out[1::2])):
        assert hinted[1] == null[1] == tools
        assert hinted[0][2:] == null[0][2:] == plain[2:]  # the episode itself is unchanged
        assert hinted[0][1]["content"].startswith(plain[1]["content"]) and "Hint: " in hinted[0][1]["content"]
        assert null[0][1]["content"].endswith("Hint: " + reflection.NULL_HINT)
