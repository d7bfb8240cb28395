"""Rollouts: groups of multi-turn episodes through the envs, tokenized into trajectories.

The trained tokens are exactly the tokens the engine sampled: each episode's sequence is built incrementally —
prompt ids, then each turn's sampled ids as returned by the engine, then the ids of whatever the chat template puts
between turns (the end of the assistant turn, the tool results, the next generation prompt). Generated text is never
re-tokenized. ``loss_mask`` is 1 exactly on sampled ids; ``turn_ids`` numbers the assistant turns (-1 elsewhere).

The envs own the tools: the rollout only passes text to ``env.step`` and reads messages back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from amrsd_envs.verifiers import Verification
from amrsd_train.engines.base import Engine, SamplingParams


@dataclass
class Trajectory:
    """One finished episode as token sequences (all lists have the same length)."""

    task_id: str
    group_id: int
    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    turn_ids: list[int] = field(default_factory=list)
    old_logprobs: list[float] = field(default_factory=list)  # sampling logprobs on loss_mask == 1, else 0
    answer_mask: list[int] = field(default_factory=list)  # 1 on sampled answer-span tokens (see answer_spans)
    reward: float = 0.0
    correct: bool = False
    truncated: bool = False
    num_turns: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    verification: Verification | None = None
    prompt_len: int = 0
    tools: list[dict[str, Any]] | None = None  # the tool schemas the prompt was rendered with

    def extend(self, ids: list[int], *, generated: bool, turn: int = -1, logprobs: list[float] | None = None,
               answer: list[int] | None = None) -> None:
        self.input_ids.extend(ids)
        self.loss_mask.extend([1 if generated else 0] * len(ids))
        self.turn_ids.extend([turn if generated else -1] * len(ids))
        self.old_logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))
        self.answer_mask.extend(answer if answer is not None else [0] * len(ids))

    @property
    def opening(self) -> list[dict[str, Any]]:
        """The episode's opening conversation (system + user): the context a teacher prompt is built from."""
        first = next((i for i, m in enumerate(self.messages) if m["role"] == "assistant"), len(self.messages))
        return [dict(m) for m in self.messages[:first]]

    @property
    def response_length(self) -> int:
        return sum(self.loss_mask)


class ChatTokens:
    """Turns conversation growth into token ids with the model's chat template, never touching sampled ids.

    Relies on the template being prefix-stable at message boundaries (tested for the shipped templates).
    """

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.eos_ids = {i for i in [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")] if i is not None and i >= 0}

    def render(self, messages: list[dict[str, Any]], tools: list[dict] | None, gen_prompt: bool) -> str:
        return self.tok.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=gen_prompt, tokenize=False
        )

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict] | None) -> list[int]:
        return self.encode(self.render(messages, tools, gen_prompt=True))

    def answer_mask(self, ids: list[int]) -> list[int]:
        """1 on the sampled ids whose text overlaps an answer span (:func:`answer_spans`), else 0."""
        pieces = [self.tok.decode([i], skip_special_tokens=False) for i in ids]
        text = "".join(pieces)
        if text != self.tok.decode(ids, skip_special_tokens=False):
            # a multi-byte character split across tokens: fall back to prefix decodes for exact offsets
            ends = [len(self.tok.decode(ids[: k + 1], skip_special_tokens=False)) for k in range(len(ids))]
            text = self.tok.decode(ids, skip_special_tokens=False)
        else:
            ends = list(itertools.accumulate(len(p) for p in pieces))
        spans = answer_spans(text)
        out, start = [], 0
        for end in ends:
            out.append(int(any(a < end and start < b for a, b in spans)))
            start = end
        return out

    def text_of(self, ids: list[int]) -> str:
        """The assistant message text of sampled ids (without a trailing end-of-turn token)."""
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        return self.tok.decode(ids, skip_special_tokens=False)

    def between_turns(
        self, before: list[dict[str, Any]], after: list[dict[str, Any]], tools: list[dict] | None, sampled_eos: int | None
    ) -> list[int]:
        """Ids from the end of the sampled assistant turn to the next generation prompt.

        ``before`` ends with the assistant message just sampled; ``after`` adds the env's tool messages;
        ``sampled_eos`` is the end-of-turn id the model sampled itself (then the template's copy is skipped).
        """
        closed = self.render(before, tools, gen_prompt=False)
        nxt = self.render(after, tools, gen_prompt=True)
        if not nxt.startswith(closed):
            raise RuntimeError("chat template is not prefix-stable; multi-turn rollouts need one that is")
        assistant_open = self.render(before[:-1], tools, gen_prompt=True)
        content = before[-1]["content"]
        # what the template writes after the assistant content (e.g. "<|im_end|>\n")
        tail = closed[len(assistant_open) + len(content):]
        if sampled_eos is not None:
            eos_text = self.tok.decode([sampled_eos], skip_special_tokens=False)
            tail = tail[len(eos_text):] if tail.startswith(eos_text) else tail
        return self.encode(tail + nxt[len(closed):])


_BOXED = re.compile(r"\\boxed\s*\{")
_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
_ARG_VALUE = re.compile(r':\s*("(?:[^"\\]|\\.)*"|-?\d[\d.eE+-]*)')


def answer_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of an assistant message that state an answer (ALGORITHMS.md amrsd (c): the gate stays closed).

    The content of each ``\\boxed{...}`` (balanced braces), the text after ``Final answer:`` / ``Answer:`` up to the
    end of its line, and every argument value of a tool call (the values after ``"arguments":``, not the keys or the
    tool name). Unclosed constructs run to the end of the text.
    """
    spans: list[tuple[int, int]] = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        spans.append((m.end(), i - 1 if depth == 0 else i))
    for m in re.finditer(r"(?im)^\s*(?:final\s+)?answer\s*:(.*)$", text):
        spans.append((m.start(1), m.end(1)))
    for call in _TOOL_CALL.finditer(text):
        body, offset = call.group(1), call.start(1)
        at = body.find('"arguments"')
        if at < 0:
            continue
        spans += [(offset + v.start(1), offset + v.end(1)) for v in _ARG_VALUE.finditer(body, at + len('"arguments"'))]
    return [(a, b) for a, b in spans if b > a]


@dataclass
class RolloutStats:
    generate_s: float = 0.0
    env_s: float = 0.0
    tokenize_s: float = 0.0
    episodes: int = 0
    turns: int = 0


def run_group_rollouts(
    engine: Engine,
    env_fns: list[gym.Env],
    task_ids: list[str],
    group_size: int,
    sampling: SamplingParams,
    *,
    max_total_tokens: int,
    seed: int,
    first_group_id: int = 0,
    reset_options: dict[str, Any] | None = None,
) -> tuple[list[Trajectory], RolloutStats]:
    """Run ``group_size`` episodes of each task in ``task_ids`` (batched generation across all live episodes).

    ``env_fns`` must hold at least ``len(task_ids) * group_size`` env instances (reused across calls).
    ``first_group_id`` is the global index of ``task_ids[0]``'s group when the caller runs a shard of a larger batch
    (a torchrun rank's block of the step's tasks): episode ``e = group_id * group_size + member`` is reset with
    ``seed + e`` and samples turn ``t`` from :func:`episode_seed` ``(seed, e, t)``, so an episode is the same
    whichever shard runs it and whichever other episodes share its generation requests.
    ``reset_options`` go to every ``env.reset`` besides the task id (e.g. ``{"record_peer": False}`` for held-out
    evaluation, ``{"peer_step": step}`` in training).
    Returns trajectories in group order (task 0's G episodes first).
    """
    n = len(task_ids) * group_size
    if len(env_fns) < n:
        raise ValueError(f"need {n} envs for {len(task_ids)} tasks x G={group_size}, got {len(env_fns)}")
    chat = ChatTokens(engine.tokenizer)
    stats = RolloutStats(episodes=n)
    trajs: list[Trajectory] = []
    state: list[dict[str, Any]] = []
    episode = [first_group_id * group_size + k for k in range(n)]  # global episode indices
    for k in range(n):
        gi, tid = k // group_size, task_ids[k // group_size]
        env = env_fns[k]
        t0 = time.perf_counter()
        messages, info = env.reset(seed=seed + episode[k], options={**(reset_options or {}), "task_id": tid})
        stats.env_s += time.perf_counter() - t0
        traj = Trajectory(task_id=tid, group_id=first_group_id + gi, tools=info["tools"], messages=messages)
        ids = chat.prompt_ids(messages, info["tools"])
        if len(ids) >= max_total_tokens:
            raise ValueError(
                f"the prompt of {tid} is {len(ids)} tokens, not below max_total_tokens={max_total_tokens}; "
                "raise max_total_tokens (the system prompt includes the tool schemas)"
            )
        traj.extend(ids, generated=False)
        traj.prompt_len = len(ids)
        trajs.append(traj)
        state.append({"env": env, "messages": messages, "tools": info["tools"], "done": False})

    turn = 0
    while True:
        live = [k for k in range(n) if not state[k]["done"]]
        if not live:
            break
        prompts = [trajs[k].input_ids for k in live]
        budget = [max_total_tokens - len(trajs[k].input_ids) for k in live]
        params = dataclasses.replace(
            sampling, max_new_tokens=max(1, min(sampling.max_new_tokens, max(budget))),
            prompt_seeds=[episode_seed(seed, episode[k], turn) for k in live],
        )
        t0 = time.perf_counter()
        outs = engine.generate(prompts, params)
        stats.generate_s += time.perf_counter() - t0
        for k, out in zip(live, outs):
            comp = out[0]
            traj, st = trajs[k], state[k]
            ids, lps = list(comp.token_ids), list(comp.logprobs)
            room = max_total_tokens - len(traj.input_ids)
            over = len(ids) > room
            ids, lps = ids[:room], lps[:room]
            traj.extend(ids, generated=True, turn=turn, logprobs=lps, answer=chat.answer_mask(ids))
            traj.num_turns += 1
            stats.turns += 1
            text = chat.text_of(ids)
            if over or (comp.finish_reason == "length" and len(traj.input_ids) >= max_total_tokens):
                _end_truncated(st, traj, text)
                continue
            t0 = time.perf_counter()
            before = st["messages"] + [{"role": "assistant", "content": text}]
            messages, reward, term, trunc, info = st["env"].step(text)
            stats.env_s += time.perf_counter() - t0
            st["messages"] = messages
            if term or trunc:
                traj.reward, traj.correct, traj.truncated = float(reward), bool(info.get("correct")), bool(trunc)
                traj.verification = info.get("verification")
                traj.messages = messages
                st["done"] = True
                continue
            t0 = time.perf_counter()
            sampled_eos = ids[-1] if ids and ids[-1] in chat.eos_ids else None
            glue = chat.between_turns(before, messages, st["tools"], sampled_eos)
            stats.tokenize_s += time.perf_counter() - t0
            if len(traj.input_ids) + len(glue) >= max_total_tokens:
                _end_truncated(st, traj, None)
                continue
            traj.extend(glue, generated=False)
        turn += 1
    return trajs, stats


def episode_seed(seed: int, episode: int, turn: int) -> int:
    """The sampling seed of turn ``turn`` of global episode ``episode`` of a rollout seeded with ``seed`` (hash-mixed:
    neighbouring episodes, turns and seeds get unrelated streams)."""
    digest = hashlib.blake2b(f"{seed}:{episode}:{turn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _end_truncated(st: dict[str, Any], traj: Trajectory, text: str | None) -> None:
    """The token budget ran out mid-episode: reward 0, marked truncated (the env episode is abandoned)."""
    traj.reward, traj.correct, traj.truncated = 0.0, False, True
    traj.messages = st["messages"] + ([{"role": "assistant", "content": text}] if text is not None else [])
    st["done"] = True
