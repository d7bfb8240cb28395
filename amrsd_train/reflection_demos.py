"""Warm-start data for meta-reflection: a policy that never saw a hint neither writes a useful one nor reads one.

Two kinds of demonstration, both built from real episodes of the real envs, tools and verifiers:

* **reflection examples** (diagnosis in, hint out). A group of attempts at a train task is made of the oracle's
  episode and copies with one step deliberately broken (a digit or operator of one tool call changed, later calls
  copying what the tool really returned, or the final answer miscopied), each played through the env so its tool
  results, extracted answer and verifier feedback are real. The target is a Socratic hint about the broken step,
  from :data:`STEP_HINTS`, that passes the same leak filter as the policy's own hints.
* **hint-conditioned solutions**: the oracle episode with such a hint appended to the prompt through the teacher
  template, and the same episode with the null hint ``(none)``, so the teacher context is in distribution.

The hints name *where* to look, never a value: what CIG can then measure is whether the hint shifts the policy's
probability on the tokens of that step.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from amrsd_envs.catalog import TaskCatalog, TaskInstance
from amrsd_envs.oracle import oracle_messages
from amrsd_envs.toolcalls import ToolCall, parse_tool_calls, render_tool_calls
from amrsd_train import reflection

STEP_HINTS: dict[str, tuple[str, ...]] = {
    "first_call": (
        "Does your first calculator call use exactly the expression the task states, operator by operator?",
        "Check the first tool call: is every number and operator the one the task gives?",
        "Which expression does the task ask you to compute first, and is that what your first call sent?",
    ),
    "later_call": (
        "Did you copy the previous tool result digit for digit into your next call?",
        "Which value did the tool return before your last call, and is that the value you used?",
        "Does your second call use the result of the first call, unchanged?",
    ),
    "final": (
        "Is the number in your box exactly what the last tool call returned?",
        "Compare your boxed answer with the last tool result: do they match digit for digit?",
        "Did you report the final tool result, or a number you changed on the way?",
    ),
    "answer_only": (
        "Recheck each step against the task: which step first gives a different value?",
        "Did you use every quantity the task gives, in the right operation?",
        "Is the value in your box the one your last step produced?",
    ),
}
"""Socratic hints per broken step: they point at a step and never state a value."""


@dataclass
class BrokenAttempt:
    step: str  # a key of STEP_HINTS
    attempt: reflection.Attempt


def _mutate_text(text: str, rng: random.Random) -> str:
    """``text`` with one digit changed (or, without digits, one of + - * swapped)."""
    digits = [m.start() for m in re.finditer(r"\d", text)]
    if digits:
        i = rng.choice(digits)
        return text[:i] + rng.choice([d for d in "0123456789" if d != text[i]]) + text[i + 1:]
    ops = [m.start() for m in re.finditer(r"[+\-*]", text)]
    if ops:
        i = rng.choice(ops)
        return text[:i] + rng.choice([o for o in "+-*" if o != text[i]]) + text[i + 1:]
    return text + "1"


def _mutate_call(message: str, rng: random.Random) -> str:
    """A tool-call message with one string argument value broken."""
    calls = parse_tool_calls(message).calls
    if not calls:
        return _mutate_text(message, rng)
    broken = []
    for call in calls:
        args = dict(call.arguments)
        keys = [k for k, v in args.items() if isinstance(v, str)]
        if keys and not broken:
            key = rng.choice(keys)
            args[key] = _mutate_text(args[key], rng)
        broken.append(ToolCall(name=call.name, arguments=args))
    return render_tool_calls(broken)


def _last_number(messages: list[dict[str, Any]]) -> str | None:
    for m in reversed(messages):
        if m["role"] == "tool":
            found = re.findall(r"-?\d+(?:\.\d+)?(?:/\d+)?", m["content"])
            return found[-1] if found else None
    return None


def _attempt(messages: list[dict[str, Any]], info: dict[str, Any]) -> reflection.Attempt:
    v = info.get("verification")
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    transcript = "\n".join(f"{m['role']}: {m['content']}" for m in messages[first:])
    return reflection.Attempt(answer=v.extracted if v is not None else None, correct=bool(info.get("correct")),
                              feedback=v.feedback if v is not None else "no final answer", transcript=transcript)


def play(env: gym.Env, task: TaskInstance, script: list[str], break_at: int | None, rng: random.Random,
         oracle_results: list[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Play ``script`` through the env. With ``break_at``, that turn is broken and later turns copy what the tools
    really returned instead of the oracle's values (``oracle_results``: the unbroken run's tool results), as a
    faithful agent after one slip would. Returns the final messages, the last info and the tool results per turn."""
    messages, info = env.reset(options={"task_id": task.id, "record_peer": False})
    results: list[str] = []
    for turn, text in enumerate(script):
        final = turn == len(script) - 1
        for right, got in zip(oracle_results or [], results):
            if right and got and right != got:
                if final:
                    text = re.sub(r"\\boxed\{[^}]*\}", lambda _: "\\boxed{" + results[-1] + "}", text)
                else:
                    text = re.sub(rf"(?<![\d.]){re.escape(right)}(?![\d.])", got, text)
        if turn == break_at:
            text = _mutate_call(text, rng) if not final else re.sub(
                r"\\boxed\{([^}]*)\}", lambda m: "\\boxed{" + _mutate_text(m.group(1), rng) + "}", text)
        messages, _, term, trunc, info = env.step(text)
        if term or trunc:
            return messages, info, results
        results.append(_last_number(messages) or "")
    return messages, info, results


def broken_attempts(env: gym.Env, task: TaskInstance, catalog: TaskCatalog, n: int, rng: random.Random
                    ) -> tuple[str, list[reflection.Attempt]] | None:
    """One broken step (chosen at random) and ``n`` wrong attempts that break it, each really played; None when the
    breakage happened not to change the answer."""
    script = oracle_messages(task, catalog)
    call_turns = [t for t, text in enumerate(script[:-1]) if parse_tool_calls(text).calls]
    options = [("first_call" if t == call_turns[0] else "later_call", t) for t in call_turns]
    options.append(("final" if call_turns else "answer_only", len(script) - 1))
    step, turn = rng.choice(options)
    _, _, oracle_results = play(env, task, script, None, rng)
    attempts = []
    for _ in range(n):
        messages, info, _ = play(env, task, script, turn, rng, oracle_results)
        attempt = _attempt(messages, info)
        if attempt.correct:
            return None
        attempts.append(attempt)
    return step, attempts


def reflection_examples(catalog: TaskCatalog, task_ids: list[str], seed: int, templates: reflection.PromptTemplates,
                        *, max_questions: int = 3, wrong_per_group: int = 3) -> list[tuple[list[dict], list[dict]]]:
    """(messages, tools=[]) of reflection demonstrations: the reflection prompt, then ``<hint>...</hint>``."""
    env = gym.make("AMRSD-All-v0", tasks=catalog)
    rng = random.Random(seed)
    out = []
    try:
        for tid in task_ids:
            task = catalog.get(tid)
            found = broken_attempts(env, task, catalog, wrong_per_group, rng)
            if found is None:
                continue
            step, wrong = found
            messages, info, _ = play(env, task, oracle_messages(task, catalog), None, rng)
            group = wrong + [_attempt(messages, info)]
            rng.shuffle(group)
            diag = reflection.diagnose(task, group, catalog=catalog)
            hint = " ".join(rng.sample(STEP_HINTS[step], k=rng.choice([1, 2])))
            target = f"{reflection.HINT_OPEN}{hint}{reflection.HINT_CLOSE}"
            if not reflection.vet_hint(target, diag, max_questions).ok:
                continue
            prompt = reflection.reflection_messages(diag, templates, max_questions=max_questions)
            out.append((prompt + [{"role": "assistant", "content": target}], []))
    finally:
        env.close()
    return out


def hint_conditioned(demos: list[tuple[list[dict], list[dict]]], catalog: TaskCatalog, seed: int,
                     templates: reflection.PromptTemplates) -> list[tuple[list[dict], list[dict]]]:
    """Each oracle demonstration twice: with a step hint appended through the teacher template, and with the null
    hint. The hint is one of those that fit the family (tool steps for tool families)."""
    rng = random.Random(seed)
    out = []
    for messages, tools in demos:
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        steps = ["first_call", "later_call", "final"] if tools else ["answer_only"]
        hint = rng.choice(STEP_HINTS[rng.choice(steps)])
        for h in (hint, None):
            out.append((reflection.teacher_messages(messages[:first], h, templates) + messages[first:], tools))
    return out
