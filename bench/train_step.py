"""Train-step throughput: this trainer's GRPO update against TRL's ``GRPOTrainer`` on the same batch, same run.

Part 1, update throughput on one fixed batch. The project's rollout (``run_group_rollouts``, temperature 1.0)
produces ``--tasks`` x ``--group`` episodes of ``--family``; ``grpo_advantages`` gives their advantages. Then, on
exactly those token sequences, loss masks and advantages:

- **amrsd**: the trainer's public update functions exactly as ``amrsd_train.trainer.train`` calls them
  (``amrsd_train.update``: ``collate``, ``score_batch`` for the old log-probs, ``ppo_update`` with one PPO epoch,
  one mini-batch, length-bucketed micro-batches of ``--micro-batch`` rows: forward through ``TokenScorer``,
  ``policy_loss``, backward per micro-batch, grad clip, one AdamW step);
- **TRL**: ``bench/trl_worker.py`` under TRL's own virtualenv (``--trl-venv``, made here when missing) builds a
  real ``GRPOTrainer`` on the same model folder and runs ``training_step`` (its ``compute_loss`` + backward) per
  micro-batch, then clip + AdamW step, with the same micro-batches in the same order; and, separately, its
  old-log-prob pass (which TRL skips at ``num_iterations=1``).

Same settings on both sides: PPO-clip eps 0.2/0.2 without dual-clip, no KL (``beta=0``), token-mean aggregation
over the whole batch (TRL's ``dapo`` loss), lr 1e-5 constant, AdamW (torch, not fused), grad-norm clip 1.0,
float32, ``torch.set_num_threads(--threads)`` and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = ``--threads`` in both
processes. The two run interleaved (amrsd, TRL, amrsd, TRL, ...), one warm-up
round then ``--repeats`` timed rounds; the table gives medians. Tokens/s counts every real token of the batch
(prompt, tool results, template glue and sampled tokens, no padding) and, separately, the trained tokens
(``loss_mask`` = 1). A numeric check prints both losses on the first micro-batch before any step: the ratio is 1
there, so both must equal ``-sum(A_i * n_i) / N`` (``n_i`` trained tokens of row i, ``N`` of the whole batch).

Part 2, where a full training step's time goes: ``amrsd_train.trainer.train`` for ``--phase-steps`` steps on the
same model and family (no mid-run eval, no intermediate checkpoint), then the mean of each ``time/*`` key of
``metrics.jsonl`` and its share of ``time/step_s``.

Usage (from the repository root)::

    .venv/bin/python bench/train_step.py                       # tiny model SFT'd on the family, cached in bench/.cache
    .venv/bin/python bench/train_step.py --model smollm2-135m --tasks 2 --group 4 --micro-batch 4 --skip-phases

Prints; asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.trl_env import DEFAULT_TRL_VENV, ensure_trl_venv  # noqa: E402

BENCH_CACHE = REPO / "bench" / ".cache"
TINY_BENCH_MODEL = "tiny-calc"


@dataclasses.dataclass(frozen=True)
class Timing:
    """One measured path: per-round seconds and the token counts it processed."""

    name: str
    seconds: list[float]
    tokens: int
    trained_tokens: int
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.median

    @property
    def trained_per_s(self) -> float:
        return self.trained_tokens / self.median


@dataclasses.dataclass(frozen=True)
class LossCheck:
    """Both implementations' loss on the first micro-batch (before any optimizer step) and the closed form."""

    amrsd: float
    trl: float
    closed_form: float
    rows: int
    trained_tokens: int
    batch_trained_tokens: int
    amrsd_grad_norm: float  # pre-clip gradient norm of the first optimizer step (same weights, same batch)
    trl_grad_norm: float
    update_loss: float  # ppo_update's actor/loss (mean of per-micro-batch token-means) on its first round
    mirror_loss: float  # the same quantity computed by this script from the trainer's own functions
    logp_max_abs_diff: float  # TRL's log-probs against the project's old log-probs, trained tokens of micro-batch 1
    logp_mean_abs_diff: float


# ----------------------------------------------------------------------------------------------------------------
# machine, venv, model


def machine_lines(threads: int, threads_note: str = "(both processes)") -> list[str]:
    import torch
    import transformers

    fields: dict[str, str] = {}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {fields.get('Model name', platform.processor() or 'unknown CPU')}, "
        f"{fields.get('CPU(s)', os.cpu_count())} CPUs ({fields.get('Core(s) per socket', '?')} cores/socket, "
        f"{fields.get('Thread(s) per core', '?')} threads/core), {platform.system()} {platform.release()}",
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"torch threads {threads}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} {threads_note}; "
        f"load average at start: {load}",
    ]


def bench_model(name: str, family: str, threads: int) -> Path:
    """A model folder: the tiny model SFT'd on ``family`` (built once into bench/.cache), or any resolvable name."""
    from amrsd_train import models

    if name != TINY_BENCH_MODEL:
        return models.resolve_model(name)
    folder = BENCH_CACHE / f"tiny-{family.replace('.', '_')}"
    if not models.is_model_dir(folder):
        from amrsd_train.config import SFTConfig
        from amrsd_train.sft import warm_start

        print(f"building the bench model: tiny SFT'd on {family} into {folder} (once; about a minute) ...",
              flush=True)
        warm_start(SFTConfig(families=[family], demos_per_family=200, steps=60, output=str(folder),
                             progress=False, threads=threads))
    return folder


# ----------------------------------------------------------------------------------------------------------------
# part 1: one batch, two implementations


def train_config(args: argparse.Namespace, model_dir: Path, **extra: Any):
    from amrsd_train.config import TrainConfig

    return TrainConfig(
        model=str(model_dir), algorithm="grpo", families=[args.family], tasks_per_step=args.tasks,
        group_size=args.group, micro_batch_size=args.micro_batch, mini_batches=1, ppo_epochs=1, clip_low=0.2, clip_high=0.2,
        dual_clip=None,  # TRL has no dual-clip; without it the two per-token formulas are the same
        loss_agg="token-mean", kl_coef=0.0, lr=1e-5, lr_schedule="constant", max_grad_norm=1.0,
        temperature=1.0, max_new_tokens=args.max_new_tokens, threads=args.threads, seed=args.seed, progress=False,
        **extra,
    )


@dataclasses.dataclass
class BatchInfo:
    """The fixed batch of part 1."""

    trajs: list
    adv: Any  # [B] float32 advantages
    rollout_s: float  # seconds of the rollout that produced it
    reward_mean: float  # of the real rewards
    tries: int  # rollouts drawn to find reward variance
    synthetic_rewards: bool  # True: no rollout had reward variance; advantages from half-1/half-0 rewards


def make_batch(cfg, model, tokenizer, tries: int):
    """Rollouts of one step on the trainer's own path, and their GRPO advantages.

    A batch whose every group has one reward has all advantages 0, so the loss check would compare 0 with 0; up to
    ``tries`` steps' rollouts are drawn looking for reward variance. If none has any, the last batch is kept with
    *synthetic* rewards (the first half of each group 1, the rest 0, through the same ``grpo_advantages``) and
    ``BatchInfo.synthetic_rewards`` says so: update cost does not depend on the advantage values.
    """
    import gymnasium as gym
    import torch

    from amrsd_train.advantages import grpo_advantages
    from amrsd_train.engines.base import SamplingParams
    from amrsd_train.engines.hf import HFEngine
    from amrsd_train.rollout import run_group_rollouts
    from amrsd_train.trainer import STOP_STRINGS, load_catalog, step_seed, StepTaskSampler

    engine = HFEngine(model=model, tokenizer=tokenizer, device=cfg.device)
    catalog = load_catalog(cfg)
    n = cfg.tasks_per_step * cfg.group_size
    envs = [gym.make("AMRSD-All-v0", tasks=catalog, max_turns=cfg.max_turns) for _ in range(n)]
    sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                              stop_strings=STOP_STRINGS)
    try:
        for step in range(tries):
            task_ids = StepTaskSampler(catalog, cfg.seed).sample(step, cfg.tasks_per_step)
            model.eval()
            t0 = time.perf_counter()
            trajs, _ = run_group_rollouts(engine, envs, task_ids, cfg.group_size, sampling,
                                          max_total_tokens=cfg.max_total_tokens, seed=step_seed(cfg.seed, step))
            seconds = time.perf_counter() - t0
            rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
            group_ids = torch.tensor([t.group_id for t in trajs])
            adv = grpo_advantages(rewards, group_ids, norm_by_std=cfg.adv_estimator == "grpo", eps=cfg.adv_eps)
            if bool((adv != 0).any()):
                return BatchInfo(trajs, adv, seconds, float(rewards.mean()), step + 1, False)
    finally:
        for env in envs:
            env.close()
    synthetic = torch.tensor([1.0 if k % cfg.group_size < cfg.group_size // 2 else 0.0 for k in range(n)])
    adv = grpo_advantages(synthetic, group_ids, norm_by_std=cfg.adv_estimator == "grpo", eps=cfg.adv_eps)
    return BatchInfo(trajs, adv, seconds, float(rewards.mean()), tries, True)


def micro_batches(cfg, batch) -> list[list[int]]:
    """The micro-batches ``ppo_update`` forms at step 0 (1 epoch, 1 mini-batch): the trainer's shuffle generator and
    its length bucketing, so TRL gets the same rows in the same micro-batches and order."""
    import torch

    from amrsd_train.trainer import update_generator
    from amrsd_train.update import micro_batch_rows

    B = batch["input_ids"].shape[0]
    order = torch.randperm(B, generator=update_generator(cfg.seed, 0))
    return [m.tolist() for m in micro_batch_rows(batch["lengths"], order, cfg.micro_batch_size)]


def mirror_losses(cfg, scorer, batch, adv, micro: list[list[int]]) -> list[tuple[float, float]]:
    """(token-mean loss, loss x accumulation weight) per micro-batch, from the public scorer and loss, as
    ``ppo_update`` computes them (its own ``actor/loss`` is compared with these below)."""
    import torch

    from amrsd_train.losses import policy_loss

    rows_all = [r for mb in micro for r in mb]
    mb_tokens = batch["loss_mask"][rows_all].sum().clamp(min=1)
    out = []
    with torch.no_grad():
        for rows in micro:
            idx = torch.tensor(rows)
            L = int(batch["lengths"][idx].max())
            mask = batch["loss_mask"][idx, :L - 1]
            logp = scorer(batch["input_ids"][idx, :L], batch["attention_mask"][idx, :L], mask > 0)
            loss, _ = policy_loss(logp, batch["old_logp"][idx, :L - 1], adv[idx, :L - 1], mask,
                                  clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
                                  agg=cfg.loss_agg)
            out.append((float(loss), float(loss * mask.sum() / mb_tokens)))
    return out


class TRLWorker:
    """``bench/trl_worker.py`` in a subprocess under the TRL venv, driven one JSON command at a time."""

    def __init__(self, python: Path, batch_file: Path, threads: int, log: Path):
        self.log = log
        self._log_fh = log.open("w")
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)  # nothing of this repository on TRL's path
        self.proc = subprocess.Popen(
            [str(python), str(REPO / "bench" / "trl_worker.py"), "--batch", str(batch_file), "--threads",
             str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_fh, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                reply = json.loads(line[2:])
                if "error" in reply:
                    raise RuntimeError(f"TRL worker: {reply['error']}")
                return reply
        raise RuntimeError(f"the TRL worker exited ({self.proc.wait()}); its log, {self.log}:\n"
                           f"{self.log.read_text()[-4000:]}")

    def ask(self, cmd: str) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"cmd": cmd}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
            except (RuntimeError, BrokenPipeError):
                pass
            self.proc.wait(timeout=30)
        self._log_fh.close()


def write_batch_file(path: Path, model_dir: Path, cfg, trajs, batch, adv, micro) -> None:
    rows = []
    for i, t in enumerate(trajs):
        n = len(t.input_ids)
        old = [0.0] + batch["old_logp"][i, : n - 1].tolist()  # old[t] = log p(ids[t] | ids[<t])
        rows.append({"input_ids": list(t.input_ids), "prompt_len": t.prompt_len, "loss_mask": list(t.loss_mask),
                     "old_logp": old})
    hyper = {"micro_batch_size": cfg.micro_batch_size, "group_size": cfg.group_size, "clip_low": cfg.clip_low,
             "clip_high": cfg.clip_high, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
             "adam_betas": list(cfg.adam_betas), "max_grad_norm": cfg.max_grad_norm}
    path.write_text(json.dumps({"model": str(model_dir), "rows": rows, "advantages": adv.tolist(),
                                "micro_batches": micro, "hyper": hyper}))


def part1(args: argparse.Namespace, model_dir: Path, trl_python: Path, work: Path) -> None:
    import torch

    from amrsd_train.trainer import load_policy, lr_lambda, update_generator
    from amrsd_train.update import TokenScorer, collate, ppo_update, score_batch

    cfg = train_config(args, model_dir)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_policy(cfg, None)
    torch.manual_seed(cfg.seed)
    info_b = make_batch(cfg, model, tokenizer, args.batch_tries)
    trajs, adv = info_b.trajs, info_b.adv

    B = len(trajs)
    tokens = sum(len(t.input_ids) for t in trajs)
    trained = sum(t.response_length for t in trajs)
    batch = collate(trajs, cfg.device)
    # GRPO's token credit: A_i on every sampled token, as the trainer's `grpo` algorithm hands it to ppo_update
    token_adv = torch.where(batch["loss_mask"] > 0, adv[:, None], torch.zeros(()))
    scorer = TokenScorer(model)
    model.eval()
    batch["old_logp"] = score_batch(scorer, batch, cfg.micro_batch_size)
    micro = micro_batches(cfg, batch)
    model.train()
    mirror = mirror_losses(cfg, scorer, batch, token_adv, micro)

    batch_file = work / "batch.json"
    write_batch_file(batch_file, model_dir, cfg, trajs, batch, adv, micro)
    print(f"batch: {cfg.tasks_per_step} tasks x G={cfg.group_size} of {args.family} = {B} episodes, rollout "
          f"{info_b.rollout_s:.1f} s (rollout {info_b.tries} of at most {args.batch_tries}); reward mean "
          f"{info_b.reward_mean:.3f}; {tokens} tokens "
          f"({trained} trained, {tokens - trained} prompt/tool/glue), longest {max(len(t.input_ids) for t in trajs)}; "
          f"{len(micro)} micro-batches of {cfg.micro_batch_size}", flush=True)
    if info_b.synthetic_rewards:
        print(f"NOTE: no group had reward variance in {info_b.tries} rollouts (the model solved none, or all), so "
              "the advantages come from SYNTHETIC rewards (first half of each group 1, the rest 0) through "
              "grpo_advantages; the sequences, masks and so all the timings are the real rollout's", flush=True)

    print("starting the TRL worker ...", flush=True)
    worker = TRLWorker(trl_python, batch_file, args.threads, work / "trl_worker.log")
    try:
        info = worker.info
        print(f"TRL worker: trl {info['trl']}, transformers {info['transformers']}, torch {info['torch']}, "
              f"threads {info['threads']}; its padded width {info['padded_width']} (prompt {info['prompt_width']} "
              f"left-padded + completion {info['completion_width']}), ours {batch['input_ids'].shape[1]}", flush=True)
        if info["trained_tokens"] != trained:
            print(f"WARNING: TRL's trained-token count {info['trained_tokens']} != ours {trained}")
        check_trl = worker.ask("check")

        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas,
                                      weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        ours_score, ours_update, ours_both, trl_score, trl_update = [], [], [], [], []
        update_loss = ours_grad_norm = trl_grad_norm = float("nan")
        rounds = 1 + args.repeats
        for r in range(rounds):
            # amrsd: exactly the trainer's steps 4 and 5 (step 0's generator fixes ppo_update's micro-batches)
            model.eval()
            t0 = time.perf_counter()
            batch["old_logp"] = score_batch(scorer, batch, cfg.micro_batch_size)
            t1 = time.perf_counter()
            model.train()
            upd = ppo_update(cfg, scorer, optimizer, scheduler, batch, token_adv, None, update_generator(cfg.seed, 0))
            t2 = time.perf_counter()
            t_trl_score = worker.ask("score")["seconds"]
            trl_upd = worker.ask("update")
            t_trl_update = trl_upd["seconds"]
            if r == 0:
                update_loss, ours_grad_norm = upd["actor/loss"], upd["actor/grad_norm"]
                trl_grad_norm = trl_upd["grad_norm"]
            label = "warm-up" if r == 0 else f"round {r}/{args.repeats}"
            print(f"  {label}: amrsd score {t1 - t0:.2f} s + update {t2 - t1:.2f} s | TRL score {t_trl_score:.2f} s, "
                  f"update {t_trl_update:.2f} s", flush=True)
            if r == 0:
                continue
            ours_score.append(t1 - t0)
            ours_update.append(t2 - t1)
            ours_both.append(t2 - t0)
            trl_score.append(t_trl_score)
            trl_update.append(t_trl_update)
    finally:
        worker.close()

    rows = [
        Timing("amrsd old-logp pass (score_batch)", ours_score, tokens, trained),
        Timing(f"amrsd ppo_update ({len(micro)} micro x {cfg.micro_batch_size}, 1 step)", ours_update, tokens, trained),
        Timing("amrsd old-logp + ppo_update", ours_both, tokens, trained),
        Timing(f"TRL old-logp pass (chunks of {cfg.micro_batch_size})", trl_score, tokens, trained,
               "only run when num_iterations > 1 or with vLLM IS correction"),
        Timing(f"TRL training_step x{len(micro)} + clip + step", trl_update, tokens, trained,
               "= GRPOTrainer as configured (num_iterations=1)"),
        Timing("TRL old-logp + update", [a + b for a, b in zip(trl_score, trl_update)], tokens, trained),
    ]
    ref = rows[4]
    name_w = max(len(r.name) for r in rows)
    print()
    print(f"| {'path (same ' + str(B) + ' sequences)':<{name_w}} | median s |  min s |   tokens/s | trained tok/s "
          f"| tok/s vs TRL update |")
    print(f"|{'-' * (name_w + 2)}|----------|--------|------------|---------------|---------------------|")
    for r in rows:
        print(f"| {r.name:<{name_w}} | {r.median:8.3f} | {min(r.seconds):6.3f} | {r.tokens_per_s:10.0f} | "
              f"{r.trained_per_s:13.0f} | {r.tokens_per_s / ref.tokens_per_s:18.2f}x |")
    print(f"(median of {args.repeats} rounds after 1 warm-up; tokens = {tokens} real tokens incl. prompt and tool "
          f"results, trained = {trained} sampled tokens)")
    for r in rows:
        if r.note:
            print(f"note: {r.name}: {r.note}")
    print()
    print(f"update only:       amrsd/TRL throughput = {ref.median / rows[1].median:.2f}x "
          f"(amrsd ppo_update vs TRL training_step+step)")
    print(f"as each runs it:   amrsd/TRL throughput = {ref.median / rows[2].median:.2f}x "
          f"(amrsd old-logp + ppo_update vs TRL update, which skips the old-logp pass at num_iterations=1)")
    print(f"same work:         amrsd/TRL throughput = {rows[5].median / rows[2].median:.2f}x "
          f"(both with an old-logp pass)")
    print(f"old-logp pass:     amrsd/TRL throughput = {rows[3].median / rows[0].median:.2f}x")

    first = micro[0]
    closed = -float(sum(adv[i] * trajs[i].response_length for i in first)) / trained
    check = LossCheck(amrsd=mirror[0][1], trl=check_trl["loss"], closed_form=closed, rows=len(first),
                      trained_tokens=sum(trajs[i].response_length for i in first), batch_trained_tokens=trained,
                      amrsd_grad_norm=ours_grad_norm, trl_grad_norm=trl_grad_norm,
                      update_loss=update_loss, mirror_loss=statistics.fmean(m[0] for m in mirror),
                      logp_max_abs_diff=check_trl["logp_max_abs_diff"],
                      logp_mean_abs_diff=check_trl["logp_mean_abs_diff"])
    print()
    print(f"loss on micro-batch 1 ({check.rows} rows, {check.trained_tokens} of {check.batch_trained_tokens} trained "
          f"tokens), before any step, as backpropagated:")
    print(f"  amrsd {check.amrsd:+.9f}   TRL {check.trl:+.9f}   -sum(A_i n_i)/N {check.closed_form:+.9f}   "
          f"|amrsd - TRL| {abs(check.amrsd - check.trl):.2e}")
    print(f"  gradient norm of the first optimizer step (whole batch, before clipping): amrsd "
          f"{check.amrsd_grad_norm:.9f}   TRL {check.trl_grad_norm:.9f}   relative diff "
          f"{abs(check.amrsd_grad_norm - check.trl_grad_norm) / max(abs(check.trl_grad_norm), 1e-30):.2e}")
    print(f"  ppo_update's actor/loss on its first round {check.update_loss:+.9f} vs this script's mirror of it "
          f"{check.mirror_loss:+.9f} (|diff| {abs(check.update_loss - check.mirror_loss):.2e})")
    print(f"  TRL per-token log-probs vs amrsd old log-probs on those tokens: "
          f"max |diff| {check.logp_max_abs_diff:.2e}, "
          f"mean {check.logp_mean_abs_diff:.2e}")


# ----------------------------------------------------------------------------------------------------------------
# part 2: where a full step's time goes


PHASES = ("generate", "verify", "score", "update")


def part2(args: argparse.Namespace, model_dir: Path, work: Path) -> None:
    from amrsd_train.trainer import train

    cfg = train_config(args, model_dir, total_steps=args.phase_steps, eval_every=0, checkpoint_every=0,
                       eval_tasks=args.phase_eval_tasks, output_dir=str(work / "run"), resume="never")
    print(f"\ntraining {cfg.total_steps} steps with train(): {cfg.tasks_per_step} tasks x G={cfg.group_size} of "
          f"{args.family}, micro-batch {cfg.micro_batch_size}, eval on {cfg.eval_tasks} tasks at start/end only ...",
          flush=True)
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    steps = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [s for s in steps if "time/step_s" in s]
    step_mean = statistics.fmean(s["time/step_s"] for s in steps)
    w = 30
    print(f"\n| {'phase (mean of ' + str(len(steps)) + ' steps)':<{w}} |  seconds | share of step |")
    print(f"|{'-' * (w + 2)}|----------|---------------|")
    accounted = 0.0
    for phase in PHASES:
        mean = statistics.fmean(s[f"time/{phase}_s"] for s in steps)
        accounted += mean
        print(f"| {phase:<{w}} | {mean:8.2f} | {100 * mean / step_mean:12.1f}% |")
    other = step_mean - accounted
    print(f"| {'other (tokenize, collate, log)':<{w}} | {other:8.2f} | {100 * other / step_mean:12.1f}% |")
    print(f"| {'step':<{w}} | {step_mean:8.2f} | {100.0:12.1f}% |")
    print(f"per step: response length {statistics.fmean(s['train/response_length'] for s in steps):.1f} tokens, "
          f"turns {statistics.fmean(s['train/turns'] for s in steps):.2f}, reward "
          f"{statistics.fmean(s['train/reward_mean'] for s in steps):.3f}; train() wall {wall:.1f} s incl. model "
          f"load and the start/end evals")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TINY_BENCH_MODEL,
                        help=f"`{TINY_BENCH_MODEL}` (tiny SFT'd on --family, built once into bench/.cache), "
                             "`smollm2-135m`, or a model folder")
    parser.add_argument("--family", default="tooluse.calc_arith", help="task family of the batch")
    parser.add_argument("--tasks", type=int, default=8, help="tasks in the batch")
    parser.add_argument("--group", type=int, default=8, help="G, episodes per task")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per assistant turn")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in both processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-tries", type=int, default=3, help="rollouts drawn looking for reward variance")
    parser.add_argument("--trl-venv", type=Path, default=DEFAULT_TRL_VENV, help="TRL's own venv (made if missing)")
    parser.add_argument("--phase-steps", type=int, default=3, help="train() steps for the phase breakdown")
    parser.add_argument("--phase-eval-tasks", type=int, default=4, help="eval tasks of those train() runs")
    parser.add_argument("--skip-phases", action="store_true", help="skip part 2 (the train() phase breakdown)")
    args = parser.parse_args()
    for name in ("batch_tries", "tasks", "group", "micro_batch", "repeats", "threads", "phase_steps",
                 "phase_eval_tasks"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.group < 2:
        raise SystemExit("--group must be >= 2 (a group of 1 has advantage 0)")

    # the same OpenMP/MKL settings in this process and in the TRL worker (which inherits this environment);
    # set before torch is imported, which reads them once
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    print("command: " + " ".join(shlex.quote(a) for a in sys.orig_argv))
    for line in machine_lines(args.threads):
        print(line)
    started = time.perf_counter()
    trl_python = ensure_trl_venv(args.trl_venv.resolve())
    model_dir = bench_model(args.model, args.family, args.threads)
    print(f"model: {args.model} ({model_dir})", flush=True)
    with tempfile.TemporaryDirectory(prefix="amrsd-train-step-") as tmp:
        part1(args, model_dir, trl_python, Path(tmp))
        if not args.skip_phases:
            part2(args, model_dir, Path(tmp))
    print(f"\ntotal bench time {time.perf_counter() - started:.0f} s; load average at end: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
