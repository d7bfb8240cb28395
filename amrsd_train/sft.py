"""Warm start by supervised fine-tuning on oracle demonstrations (``amrsd-train sft``).

Demonstrations are real episodes: each family's scripted oracle is played through the env, so tool calls are
executed by the real tools and the tool messages in the demonstration are what the env returned. They are tokenized
exactly the way rollouts are (prompt ids, then per assistant turn the ids the model should emit, then the template
glue), so the SFT target format and the RL rollout format cannot drift apart: a tool-call turn ends at
``</tool_call>`` (rollouts stop there), a final-answer turn ends with the end-of-turn token.

For the embedded ``tiny`` model this also builds the model: the tokenizer is trained on the demonstrations, the
weights are initialised, SFT runs for a fixed, small number of steps (stopping early on purpose, so RL has room to
improve), and the result is saved where ``resolve_model("tiny")`` finds it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

import amrsd_envs  # noqa: F401
from amrsd_envs.catalog import TaskCatalog, load_env_tasks
from amrsd_envs.oracle import OraclePolicy
from amrsd_train.config import SFTConfig
from amrsd_train.rollout import ChatTokens
from amrsd_train.update import TokenScorer


def collect_demonstrations(catalog: TaskCatalog, per_family: int, seed: int) -> list[tuple[list[dict], list[dict]]]:
    """(messages, tools) of oracle episodes on the first train instances of every family."""
    env = gym.make("AMRSD-All-v0", tasks=catalog)
    policy = OraclePolicy(env)
    demos = []
    try:
        for fam in catalog:
            ids = env.unwrapped.task_ids("train", per_family, families=[fam.id])
            for k, tid in enumerate(ids):
                messages, info = env.reset(seed=seed + k, options={"task_id": tid})
                tools = info["tools"]
                done = False
                while not done:
                    messages, reward, term, trunc, info = env.step(policy(messages, info.get("tools")))
                    done = term or trunc
                if reward != 1.0:
                    raise RuntimeError(f"the oracle failed on {tid}: the family is broken ({info.get('verification')})")
                demos.append((messages, tools))
    finally:
        env.close()
    return demos


def tokenize_demo(chat: ChatTokens, messages: list[dict[str, Any]], tools: list[dict]) -> tuple[list[int], list[int]]:
    """Input ids and loss mask of one demonstration, built turn by turn like a rollout."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    ids = chat.prompt_ids(messages[:first], tools)
    mask = [0] * len(ids)
    eos = chat.tok.convert_tokens_to_ids("<|im_end|>")
    i = first
    while i < len(messages):
        content = messages[i]["content"]
        j = i + 1
        while j < len(messages) and messages[j]["role"] != "assistant":
            j += 1
        target = chat.encode(content)
        final = j >= len(messages)
        if final:
            target = target + [eos]
        ids += target
        mask += [1] * len(target)
        if not final:
            glue = chat.between_turns(messages[: i + 1], messages[:j], tools, sampled_eos=None)
            ids += glue
            mask += [0] * len(glue)
        i = j
    return ids, mask


STOP_WINDOW = 20  # steps averaged for ``stop_at_loss``: one batch's loss is too noisy to stop on


def sft(model: torch.nn.Module, examples: list[tuple[list[int], list[int]]], cfg: SFTConfig,
        solves: list[bool] | None = None) -> list[float]:
    """Masked next-token cross-entropy for up to ``cfg.steps`` AdamW steps; returns the loss per step.

    With ``cfg.stop_at_loss`` it stops as soon as the mean loss of the last ``STOP_WINDOW`` steps reaches it: a
    warm start defined by how far it got rather than by a step count, which is what keeps the RL start comparable
    across seeds when the model learns copying after a plateau whose length varies from seed to seed. ``solves``
    marks the examples that solve a task (default: all); the stopping loss is theirs alone, so reflection examples
    (short, quickly learnt hints) do not stop the warm start before the policy can solve. Each batch is drawn from
    one kind (solving or reflecting), the two kinds equally often: the reflection examples are few, and drawn in
    proportion to their number the tiny model had not learnt to write a hint after 100 steps (loss 5.8).
    """
    solves = solves if solves is not None else [True] * len(examples)
    pools = [p for p in (np.flatnonzero(solves), np.flatnonzero(~np.asarray(solves, dtype=bool))) if len(p)]
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)

    def lr_at(k: int) -> float:
        if k < cfg.warmup_steps:
            return (k + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        frac = (k - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses, solve_losses = [], []
    scorer = TokenScorer(model)
    model.train()
    bar = tqdm(range(cfg.steps), desc="sft", disable=not cfg.progress, unit="step")
    for _ in bar:
        # one kind per batch: reflection prompts are ~3x longer than solutions, and a mixed batch pads every row
        pool = pools[int(rng.integers(len(pools)))] if len(pools) > 1 else pools[0]
        picked = pool[rng.choice(len(pool), size=min(cfg.batch_size, len(pool)), replace=False)]
        batch = [examples[i] for i in picked]
        T = max(len(x) for x, _ in batch)
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        attn = torch.zeros(len(batch), T, dtype=torch.long)
        mask = torch.zeros(len(batch), T)
        for r, (x, m) in enumerate(batch):
            ids[r, : len(x)] = torch.tensor(x)
            attn[r, : len(x)] = 1
            mask[r, : len(x)] = torch.tensor(m, dtype=torch.float32)
        m = mask[:, 1:]
        nll = -scorer(ids, attn, m > 0)  # the trainer's scorer: the LM head runs on the demonstrated tokens only
        loss = (nll * m).sum() / m.sum().clamp(min=1)
        solving = torch.tensor([solves[i] for i in picked])[:, None] * m
        solve_loss = ((nll.detach() * solving).sum() / solving.sum()).item() if solving.sum() > 0 else None
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if solve_loss is not None:
            solve_losses.append(solve_loss)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if cfg.stop_at_loss is not None and len(solve_losses) >= STOP_WINDOW:
            if float(np.mean(solve_losses[-STOP_WINDOW:])) <= cfg.stop_at_loss:
                bar.set_postfix(loss=f"{loss.item():.3f}", stopped=f"mean loss <= {cfg.stop_at_loss}")
                break
    model.eval()
    return losses


Demos = list[tuple[list[dict], list[dict]]]


def _fitting(examples: list[tuple[list[int], list[int]]], max_len: int) -> list[tuple[list[int], list[int]]]:
    kept = [e for e in examples if len(e[0]) <= max_len]
    if examples and not kept:
        raise ValueError(f"every demonstration is longer than max_len={max_len} tokens")
    return kept


def reflection_demonstrations(catalog: TaskCatalog, cfg: SFTConfig) -> tuple[Demos, Demos]:
    """Reflection examples and hint-conditioned solutions (``reflection_demos_per_family``,
    ``hint_demos_per_family``); see :mod:`amrsd_train.reflection_demos`."""
    if not (cfg.reflection_demos_per_family or cfg.hint_demos_per_family):
        return [], []
    from amrsd_train import reflection, reflection_demos

    templates = reflection.PromptTemplates.load()
    env = gym.make("AMRSD-All-v0", tasks=catalog)
    try:
        # the reflection tasks come after the oracle demos' instances, so the two sets do not overlap
        ids = [tid for fam in catalog for tid in env.unwrapped.task_ids(
            "train", cfg.demos_per_family + cfg.reflection_demos_per_family, families=[fam.id]
        )[cfg.demos_per_family:]]
    finally:
        env.close()
    reflect = reflection_demos.reflection_examples(catalog, ids, cfg.seed, templates) if ids else []
    hinted: Demos = []
    if cfg.hint_demos_per_family:
        # the first oracle episodes of each family again (the same ones the plain demos start with), now with hints
        plain = collect_demonstrations(catalog, cfg.hint_demos_per_family, cfg.seed)
        hinted = reflection_demos.hint_conditioned(plain, catalog, cfg.seed, templates)
    return reflect, hinted


WARM_START_VERSION = 3
"""Bumped when the demonstrations a warm start is made of, or its loss's arithmetic, change (2: reflection and
hint-conditioned demos; 3: the loss is scored by ``TokenScorer``, so its floats round differently)."""


_NOT_RESULT = {"progress", "threads", "output", "use_shipped"}  # SFT settings that do not change the model it makes
SHIPPED_DIR = Path(__file__).parent / "warm_starts"
"""Warm starts shipped with the package, one folder per cache key (``tiny-<key>``), each with ``shipped.json``."""
SHIPPED_FILE = "shipped.json"


def _cache_key(**payload: object) -> str:
    """12 hex digits naming a cached model: the warm-start version and ``payload`` (JSON, sorted keys)."""
    import hashlib

    blob = json.dumps({"v": WARM_START_VERSION, **payload}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def warm_start_folder(cfg: SFTConfig, tasks_dir: str | None = None) -> Path:
    """Where the trainer caches the tiny model warm-started with ``cfg``: keyed on every setting that changes the
    result (not ``progress``, ``threads`` or ``output``) and on the tasks folder, so a changed warm start never
    silently reuses another one's model."""
    from amrsd_train import models

    key = _cache_key(cfg=cfg.model_dump(mode="json", exclude=_NOT_RESULT), tasks_dir=tasks_dir)
    return models.tiny_model_dir().parent / f"tiny-{key}"


def resolve_warm_start(cfg: SFTConfig, tasks_dir: str | None = None) -> Path:
    """The folder of the tiny model warm-started with ``cfg``: the cached one; else the shipped one of the same key
    (``cfg.use_shipped``); else build it now and cache it. The key covers every setting and the tasks folder, so a
    changed warm start never loads a shipped model made from other settings: it is built."""
    from amrsd_train import models

    folder = warm_start_folder(cfg, tasks_dir)
    if models.is_model_dir(folder):
        return folder
    shipped = SHIPPED_DIR / folder.name
    if cfg.use_shipped and models.is_model_dir(shipped):
        return shipped
    return warm_start(cfg.model_copy(update={"output": str(folder)}), tasks_dir=tasks_dir)


def ship_warm_start(cfg: SFTConfig, built: Path, seconds: float | None, *, note: str | None = None,
                    into: Path = SHIPPED_DIR) -> Path:
    """Copy the warm start ``built`` from ``cfg`` (built-in tasks) into ``into/tiny-<key>`` with a ``shipped.json``
    naming the settings, the commit it was shipped at, the machine, the build time (None: copied from the cache; see
    ``note``) and the weights' sha256 (a test checks it)."""
    import datetime as dt
    import hashlib
    import platform
    import shutil
    import subprocess

    from amrsd_train import models

    target = into / warm_start_folder(cfg).name
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent, check=False).stdout.strip() or "unknown"
    with models.atomic_output_dir(target, overwrite=True) as out:
        for f in built.iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
        (out / SHIPPED_FILE).write_text(json.dumps({
            "key": target.name.removeprefix("tiny-"),
            "settings": cfg.model_dump(mode="json", exclude=_NOT_RESULT),
            "warm_start_version": WARM_START_VERSION,
            "commit": commit,
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
            "build_seconds": None if seconds is None else round(seconds),
            "note": note,
            "shipped": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "model_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
        }, indent=2) + "\n")
    return target


def _first_phase_folder(cfg: SFTConfig, out: Path) -> Path:
    """Where the solving phase's model is kept beside ``out``, keyed on the settings it depends on (all but the
    second phase's), so tuning ``reflection_steps`` / ``reflection_lr`` does not repeat the long first phase."""
    settings = cfg.model_dump(mode="json", exclude=_NOT_RESULT | {"reflection_steps", "reflection_lr"})
    return out.parent / f".tiny-phase1-{_cache_key(cfg=settings)}"


def warm_start(cfg: SFTConfig, tasks_dir: str | None = None) -> Path:
    """Build (or load) a model, SFT it on oracle demonstrations, save it; returns the saved folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from amrsd_train import models

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    catalog = load_env_tasks(cfg.envs, families=cfg.families, path=tasks_dir)
    demos = collect_demonstrations(catalog, cfg.demos_per_family, cfg.seed)
    reflect, hinted = reflection_demonstrations(catalog, cfg)
    all_demos = demos + hinted + reflect
    out = Path(cfg.output) if cfg.output else models.tiny_model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.init == "build_tiny":
            # the tokenizer learns from the conversations exactly as the template renders them (tool schemas
            # included), so the fixed parts of every prompt compress into few tokens
            corpus = [models.render_chat(msgs, tools, style="compact") for msgs, tools in all_demos]
            src = models.build_tiny_model(Path(tmp) / "init", corpus, seed=cfg.seed, vocab_size=cfg.vocab_size)
        else:
            if not cfg.model:
                raise ValueError("init=from_model needs `model` (an embedded name or a folder)")
            src = models.resolve_model(cfg.model)
        tokenizer = AutoTokenizer.from_pretrained(src)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
            chat = ChatTokens(tokenizer)
            plain = _fitting([tokenize_demo(chat, msgs, tools) for msgs, tools in demos], cfg.max_len)
            first = _first_phase_folder(cfg, out)
            if (reflect or hinted) and models.is_model_dir(first):
                # the solving phase of this very configuration ran before (the second phase's settings changed)
                model = AutoModelForCausalLM.from_pretrained(first, dtype=torch.float32)
                losses = json.loads((first / "sft_losses.json").read_text())
            else:
                losses = sft(model, plain, cfg)
                if reflect or hinted:
                    with models.atomic_output_dir(first, overwrite=True) as saved:
                        model.save_pretrained(saved)
                        tokenizer.save_pretrained(saved)
                        (saved / "sft_losses.json").write_text(json.dumps(losses))
            if reflect or hinted:
                solving = _fitting([tokenize_demo(chat, m, t) for m, t in hinted], cfg.max_len)
                reflecting = _fitting([tokenize_demo(chat, m, t) for m, t in reflect], cfg.max_len)
                phase2 = cfg.model_copy(update={"steps": cfg.reflection_steps, "stop_at_loss": None, "warmup_steps": 10,
                                                "lr": cfg.reflection_lr, "lr_schedule": "constant"})
                solving = plain + solving
                losses += sft(model, solving + reflecting, phase2,
                              solves=[True] * len(solving) + [False] * len(reflecting))
        with models.atomic_output_dir(out, overwrite=True) as final:
            model.save_pretrained(final)
            tokenizer.save_pretrained(final)
            meta = models.read_metadata(src)
            if meta is not None:
                (final / models.METADATA_FILE).write_text(
                    json.dumps({**meta.__dict__, "source": f"{meta.source}; sft {len(losses)} steps on "
                                f"{len(plain)} oracle demos (+ {len(reflect)} reflection, {len(hinted)} hinted), "
                                f"final loss {losses[-1]:.4f}"}, indent=2))
    return out
