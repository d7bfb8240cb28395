"""Evaluate any policy on an env id and report pass@1 / pass@k (no torch needed).

A policy is a callable ``policy(messages) -> str`` or ``policy(messages, tools) -> str``, or one of the strings
``"oracle"`` (replays each task's scripted oracle) and ``"openai"`` (an OpenAI-compatible ``/v1/chat/completions``
endpoint through httpx; ``policy_options={"base_url": ..., "model": ..., "api_key": ..., "temperature": ...}``).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import gymnasium as gym
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

Policy = Callable[..., str]


class EpisodeRecord(BaseModel):
    task_id: str
    family: str
    sample: int
    correct: bool
    reward: float
    turns: int
    truncated: bool
    extracted: str | None = None
    feedback: str = ""
    transcript: list[dict[str, Any]] | None = None


class FamilyScore(BaseModel):
    n_tasks: int
    pass_at_1: float
    pass_at_k: float


class EvalReport(BaseModel):
    env_id: str
    policy: str
    split: str
    k: int
    n_samples: int = Field(description="Episodes per task (>= k); pass@k uses the unbiased estimator over them.")
    n_tasks: int
    pass_at_1: float
    pass_at_k: float
    per_family: dict[str, FamilyScore]
    episodes: list[EpisodeRecord]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate(
    env_id: str,
    policy: Policy | str,
    *,
    n_tasks: int = 50,
    k: int = 1,
    n_samples: int | None = None,
    split: str = "test",
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    policy_options: dict[str, Any] | None = None,
    keep_transcripts: bool = False,
    progress: bool = True,
) -> EvalReport:
    """Run ``n_samples`` (default ``k``) episodes on each of ``n_tasks`` tasks of ``split`` and score them.

    The tasks are the first instances of each family in the split, round-robin: the same for every policy and
    every run with the same arguments.
    """
    n_samples = n_samples or k
    if n_samples < k:
        raise ValueError(f"n_samples ({n_samples}) must be >= k ({k})")
    env = gym.make(env_id, split=split, **(env_kwargs or {}))
    try:
        base = env.unwrapped
        name, fn = _resolve_policy(policy, env, policy_options or {})
        task_ids = base.task_ids(split, n_tasks)
        records: list[EpisodeRecord] = []
        bar = tqdm(total=len(task_ids) * n_samples, desc=f"eval {env_id}", disable=not progress, unit="ep")
        for t, task_id in enumerate(task_ids):
            for s in range(n_samples):
                records.append(_episode(env, fn, task_id, s, seed + t * n_samples + s, keep_transcripts))
                bar.update(1)
            bar.set_postfix(pass1=f"{sum(r.correct for r in records) / len(records):.3f}")
        bar.close()
    finally:
        env.close()
    return _report(env_id, name, split, k, n_samples, task_ids, records)


def _episode(env: gym.Env, fn: Policy, task_id: str, sample: int, seed: int, keep: bool) -> EpisodeRecord:
    messages, info = env.reset(seed=seed, options={"task_id": task_id})
    tools = info["tools"]
    reward, terminated, truncated, turns = 0.0, False, False, 0
    while not (terminated or truncated):
        text = fn(messages, tools)
        messages, reward, terminated, truncated, info = env.step(text)
        turns += 1
    v = info.get("verification")
    return EpisodeRecord(
        task_id=task_id,
        family=task_id.split("/", 1)[0],
        sample=sample,
        correct=bool(info.get("correct", False)),
        reward=float(reward),
        turns=turns,
        truncated=truncated,
        extracted=v.extracted if v is not None else None,
        feedback=v.feedback if v is not None else "truncated: no final answer within max_turns",
        transcript=messages if keep else None,
    )


def _report(
    env_id: str, name: str, split: str, k: int, n: int, task_ids: list[str], records: list[EpisodeRecord]
) -> EvalReport:
    by_task: dict[str, list[EpisodeRecord]] = {}
    for r in records:
        by_task.setdefault(r.task_id, []).append(r)
    p1 = {t: pass_at_k(n, sum(r.correct for r in rs), 1) for t, rs in by_task.items()}
    pk = {t: pass_at_k(n, sum(r.correct for r in rs), k) for t, rs in by_task.items()}
    fams: dict[str, list[str]] = {}
    for t in task_ids:
        fams.setdefault(t.split("/", 1)[0], []).append(t)
    per_family = {
        f: FamilyScore(
            n_tasks=len(ts), pass_at_1=sum(p1[t] for t in ts) / len(ts), pass_at_k=sum(pk[t] for t in ts) / len(ts)
        )
        for f, ts in sorted(fams.items())
    }
    total = max(len(task_ids), 1)
    return EvalReport(
        env_id=env_id,
        policy=name,
        split=split,
        k=k,
        n_samples=n,
        n_tasks=len(task_ids),
        pass_at_1=sum(p1.values()) / total,
        pass_at_k=sum(pk.values()) / total,
        per_family=per_family,
        episodes=records,
    )


BFCL_NON_LIVE = ("bfcl.simple", "bfcl.multiple", "bfcl.parallel", "bfcl.parallel_multiple")
BFCL_LIVE = ("bfcl.live_simple", "bfcl.live_multiple")


def bfcl_scores(report: EvalReport) -> dict[str, float]:
    """BFCL-style accuracy of the ``bfcl.*`` families in ``report``: each category's accuracy (its pass@1), then
    BFCL's summaries over the categories present: ``non_live_ast`` (the unweighted mean of simple, multiple, parallel
    and parallel_multiple; BFCL's own simple score also averages Java and JavaScript, which are not in the suite),
    ``live_ast`` (the mean over live tasks, i.e. weighted by task count, as BFCL weights live categories) and
    ``irrelevance``. Empty when the report has no BFCL family."""
    fams = {f: s for f, s in report.per_family.items() if f.startswith("bfcl.")}
    scores = {f.removeprefix("bfcl."): s.pass_at_1 for f, s in fams.items()}
    non_live = [fams[f].pass_at_1 for f in BFCL_NON_LIVE if f in fams]
    if non_live:
        scores["non_live_ast"] = sum(non_live) / len(non_live)
    live = [fams[f] for f in BFCL_LIVE if f in fams]
    if live:
        scores["live_ast"] = sum(s.pass_at_1 * s.n_tasks for s in live) / sum(s.n_tasks for s in live)
    return scores


def _resolve_policy(policy: Policy | str, env: gym.Env, options: dict[str, Any]) -> tuple[str, Policy]:
    if isinstance(policy, str):
        if policy == "oracle":
            from amrsd_envs.oracle import OraclePolicy

            if options:
                raise ValueError(f"the oracle policy takes no options, got {sorted(options)}")
            return "oracle", OraclePolicy(env)
        if policy == "openai":
            from amrsd_envs.openai_policy import OpenAIPolicy

            p = OpenAIPolicy(**options)
            return f"openai:{p.model}", p
        raise ValueError(f"unknown policy {policy!r}: pass a callable, 'oracle' or 'openai'")
    if not callable(policy):
        raise TypeError(f"policy must be callable or a string, got {type(policy).__name__}")
    try:
        n_params = len(inspect.signature(policy).parameters)
    except (TypeError, ValueError):
        n_params = 2
    name = getattr(policy, "__name__", type(policy).__name__)
    if n_params == 1:
        return name, lambda messages, tools: policy(messages)
    return name, policy
