"""The training loop: rollout -> verify -> advantages -> token credit -> PPO epochs -> log -> eval -> checkpoint.

``train(config)`` reads top to bottom; everything it calls is either a pure function (``advantages``, ``losses``),
the update's pieces (``update``: collate, token scoring, PPO epochs) or a small helper in this file with one job.
The helpers that other loops and benchmarks reuse are public (``load_policy``, ``load_catalog``, ``make_envs``,
``StepTaskSampler``, ``step_seed``, ``update_generator``, ``lr_lambda``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

import amrsd_envs  # noqa: F401  (registers the env ids)
from amrsd_envs.catalog import TaskCatalog, TaskSampler, load_env_tasks
from amrsd_envs.evaluate import pass_at_k
from amrsd_envs.peers import PeerBuffer
from amrsd_envs.sandbox import SharedSandbox
from amrsd_train import checkpoint as ckpt
from amrsd_train import distributed
from amrsd_train.advantages import ADVANTAGE_ESTIMATORS
from amrsd_train.algorithms import ALGORITHMS, CreditContext, VerifiedBatch
from amrsd_train.config import TrainConfig
from amrsd_train.credit_log import write_inspect_record
from amrsd_train.engines import make_engine
from amrsd_train.engines.base import SamplingParams
from amrsd_train.metrics import MetricsLogger, plot_run
from amrsd_train.reflection import PromptTemplates, Reflector
from amrsd_train.rollout import ChatTokens, Trajectory, run_group_rollouts
from amrsd_train.teacher import Teacher
from amrsd_train.update import TokenScorer, collate, ppo_update, score_batch

STOP_STRINGS = tuple(TrainConfig.model_fields["stop_strings"].default)  # ("</tool_call>",)


@dataclass
class TrainResult:
    """What ``run`` returns: final metrics, the last checkpoint and where everything was written."""

    output_dir: Path
    checkpoint: Path | None
    final_metrics: dict[str, Any]
    eval_before: float | None
    eval_after: float | None
    plot: Path | None


def train(cfg: TrainConfig) -> TrainResult:
    distributed.setup(cfg)  # under torchrun: join the process group (one process: nothing)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resume_from = _resume_path(cfg, out / "checkpoints")
    if resume_from is not None:
        ckpt.check_resume_config(resume_from, cfg.model_dump(mode="json"))

    # -- model, engine, algorithm, tasks -----------------------------------------------------------------------
    t0 = time.perf_counter()
    model, tokenizer = load_policy(cfg, resume_from / "model" if resume_from else None)
    t_load = time.perf_counter() - t0  # includes the tiny model's warm start when it is not cached yet
    torch.manual_seed(cfg.seed)
    engine = make_engine(cfg.engine, model=model, tokenizer=tokenizer, device=cfg.device)
    algorithm = ALGORITHMS.get(cfg.algorithm)()
    adv_estimator = ADVANTAGE_ESTIMATORS.get(cfg.adv_estimator)
    scorer = TokenScorer(model)  # the one log-prob path: old, reference and current log-probs
    ref_scorer = TokenScorer(_frozen_copy(cfg, model)) if cfg.kl_coef > 0 else None
    sandbox = SharedSandbox(cfg.sandbox_backend)  # first: answer functions of generator families run in it too
    catalog = load_catalog(cfg, sandbox)
    task_sampler = StepTaskSampler(catalog, cfg.seed)
    peers = PeerBuffer(per_task=cfg.peers_per_task)
    envs, sandbox = make_envs(cfg, catalog, peers, sandbox)
    sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                              stop_strings=cfg.stop_strings)
    ctx = _credit_context(cfg, algorithm, model, tokenizer, engine, catalog, peers)

    update_scorer = distributed.wrap_for_update(scorer, cfg.distributed)  # torchrun: DDP(scorer); else scorer
    optimizer = torch.optim.AdamW(update_scorer.parameters(), lr=cfg.lr, betas=cfg.adam_betas,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    start_step, best = 0, {}
    if resume_from is not None:
        state, blobs = ckpt.load_trainer_state(resume_from)
        distributed.load_optimizer_state(update_scorer, optimizer, blobs["optimizer"])
        scheduler.load_state_dict(blobs["scheduler"])
        ckpt.set_rng_state(blobs["rng"])
        if ctx.teacher is not None and "teacher" in blobs:
            ctx.teacher.load_state_dict(blobs["teacher"])
        start_step, best = state.step, state.best
        if (resume_from / "peers.sqlite").exists():
            peers.load(resume_from / "peers.sqlite")
    logger = (MetricsLogger(out, resume_step=start_step if resume_from else None, tensorboard=cfg.tensorboard)
              if distributed.is_rank0() else distributed.NoLogger())
    if distributed.is_rank0():
        (out / "config.yaml").write_text(cfg.to_yaml())

    eval_before = best.get("eval_before")
    if eval_before is None:
        with distributed.full_params(update_scorer):
            first_eval = _evaluate(cfg, engine, envs, catalog)
        eval_before = best["eval_before"] = first_eval["eval/pass@1"]
        logger.log(0, {**first_eval, "time/load_model_s": t_load})

    bar = tqdm(range(start_step, cfg.total_steps), initial=start_step, total=cfg.total_steps,
               desc=f"train {cfg.algorithm}", disable=not (cfg.progress and distributed.is_rank0()), unit="step")
    metrics: dict[str, Any] = {}
    last_ckpt = resume_from
    for step in bar:
        t_step = time.perf_counter()
        model.eval()

        with distributed.full_params(update_scorer):  # FSDP: the whole model on every rank to generate and score
            # 1. rollout: G episodes per task, tools run inside the envs, verified at the end of each episode; under
            #    torchrun this rank's block of the step's tasks, whole groups, episodes seeded by global index
            task_ids, first_group = distributed.shard(task_sampler.sample(step, cfg.tasks_per_step))
            trajs, rstats = run_group_rollouts(engine, envs, task_ids, cfg.group_size, sampling,
                                               max_total_tokens=cfg.max_total_tokens, seed=step_seed(cfg.seed, step),
                                               first_group_id=first_group, reset_options={"peer_step": step})
            distributed.share_peers(peers, task_ids, step)

            # 2. sequence advantages A_i from each group's rewards
            rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
            group_ids = torch.tensor([t.group_id for t in trajs])
            adv = adv_estimator(rewards, group_ids, cfg.adv_eps)
            batch = collate(trajs, cfg.device)
            verified = _verified_batch(trajs, adv, group_ids, batch, step, cfg.total_steps)

            # 3. token credit: the algorithm (AMR-SD: reflect -> teacher CIG -> gate) turns A_i into A_hat_{i,t}
            t0 = time.perf_counter()
            if ctx.teacher is not None:
                ctx.teacher.refresh(model, step)
            credit = algorithm.credit(verified, ctx)
            t_credit = time.perf_counter() - t0

            # 4. old (and reference) log-probs, scored once before the update
            t0 = time.perf_counter()
            if cfg.recompute_old_logprobs and cfg.ppo_epochs * cfg.mini_batches > 1:
                batch["old_logp"] = score_batch(scorer, batch, cfg.micro_batch_size)
            elif cfg.recompute_old_logprobs:
                batch["old_logp"] = None  # one update per batch: the policy is still pi_old, ratio = 1 (as TRL/verl)
            ref_logp = score_batch(ref_scorer, batch, cfg.micro_batch_size) if ref_scorer is not None else None
            t_score = time.perf_counter() - t0

        # 5. PPO epochs over mini-batches, gradient accumulation over micro-batches
        t0 = time.perf_counter()
        model.train()
        upd = ppo_update(cfg, update_scorer, optimizer, scheduler, batch, credit.token_adv, ref_logp,
                         update_generator(cfg.seed, step), aux_loss=credit.aux_loss)
        engine.update_weights(model)
        t_update = time.perf_counter() - t0

        # 6. metrics (reduced over ranks), what the inspect page needs, eval, checkpoint (rank 0 writes)
        metrics = distributed.reduce_metrics({
            "train/reward_mean": rewards.mean().item(),
            "train/pass_rate": float(np.mean([t.correct for t in trajs])),
            "train/response_length": float(np.mean([t.response_length for t in trajs])),
            "train/batch_tokens": int(batch["attention_mask"].sum()),  # real tokens, no padding
            "train/turns": float(np.mean([t.num_turns for t in trajs])),
            "train/truncated_frac": float(np.mean([t.truncated for t in trajs])),
            "train/groups_with_signal": float((_group_std(rewards, group_ids) > 0).float().mean()),
            "train/adv_abs_mean": adv.abs().mean().item(),
            "train/token_adv_abs_mean": float(credit.token_adv[verified.mask].abs().mean()),
            "train/lr": scheduler.get_last_lr()[0],
            **credit.metrics,
            **upd,
            "time/generate_s": rstats.generate_s,
            "time/verify_s": rstats.env_s,
            "time/credit_s": t_credit,
            "time/score_s": t_score,
            "time/update_s": t_update,
            "time/step_s": time.perf_counter() - t_step,
        })
        done = step + 1
        if cfg.inspect_groups and distributed.is_rank0():
            write_inspect_record(out / "inspect", done, cfg, tokenizer, verified, credit, cfg.inspect_groups)
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.total_steps:
            with distributed.full_params(update_scorer):
                metrics.update(_evaluate(cfg, engine, envs, catalog))
        logger.log(done, metrics)
        bar.set_postfix(_postfix(metrics))
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.total_steps:
            optimizer_state = distributed.optimizer_state(update_scorer, optimizer)
            with distributed.full_params(update_scorer):
                last_ckpt = distributed.on_rank0(
                    ckpt.save_checkpoint, out / "checkpoints", step=done, model=model, tokenizer=tokenizer,
                    optimizer=optimizer_state, scheduler=scheduler, peers=peers, metrics_file=logger.path,
                    state=ckpt.TrainState(done, cfg.model_dump(mode="json"), best), keep=cfg.keep_checkpoints,
                    extra={"teacher": ctx.teacher.state_dict()} if ctx.teacher is not None else None,
                )
    bar.close()

    rows = logger.rows()
    evals = [r["eval/pass@1"] for r in rows if "eval/pass@1" in r]
    plot = plot_run(rows, out / "training.png", f"{cfg.algorithm} on {', '.join(cfg.envs)} ({cfg.model})") if rows else None
    logger.close()
    for env in envs:
        env.close()
    sandbox.close()
    distributed.teardown()
    return TrainResult(out, last_ckpt, metrics, eval_before, evals[-1] if evals else None, plot)


# ----------------------------------------------------------------------------------------------------------------
# helpers, each with one job


def load_policy(cfg: TrainConfig, checkpoint_model: Path | None):
    """The policy to train: from a checkpoint when resuming, else the configured model (warm-starting `tiny`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from amrsd_train import models

    if checkpoint_model is not None:
        folder = checkpoint_model
    elif cfg.model == "tiny":
        from amrsd_train.sft import resolve_warm_start

        folder = resolve_warm_start(cfg.warm_start, cfg.tasks_dir)
    else:
        folder = models.resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, cfg.dtype)).to(cfg.device)
    return model, tokenizer


def make_envs(cfg: TrainConfig, catalog: TaskCatalog, peers: PeerBuffer,
               sandbox: SharedSandbox | None = None) -> tuple[list[gym.Env], SharedSandbox]:
    """One env per concurrent episode (a step's G x tasks, or an evaluation's, this rank's share), all on one
    sandbox."""
    sandbox = sandbox if sandbox is not None else SharedSandbox(cfg.sandbox_backend)
    world = distributed.world_size()
    n_envs = max(cfg.tasks_per_step // world * cfg.group_size, -(-cfg.eval_tasks // world) * cfg.eval_k)
    envs = [gym.make("AMRSD-All-v0", tasks=catalog, max_turns=cfg.max_turns, peer_buffer=peers, sandbox=sandbox)
            for _ in range(n_envs)]
    return envs, sandbox


class StepTaskSampler:
    """Train-split task ids for a step: a pure function of (seed, step), so a resumed run draws the same tasks.

    The draws are the catalog's :class:`TaskSampler` (the env's too): bounded, and an empty train split fails here,
    at start-up, naming the families."""

    def __init__(self, catalog: TaskCatalog, seed: int):
        self.seed = seed
        self.sampler = TaskSampler(catalog, "train")

    def sample(self, step: int, n: int) -> list[str]:
        return [t.id for t in self.sampler.sample(np.random.default_rng([self.seed, step]), n)]


def _credit_context(cfg: TrainConfig, algorithm, model, tokenizer, engine, catalog, peers) -> CreditContext:
    """The teacher and reflector the algorithm asks for (built only when it uses them), and the rest it may read."""
    templates = PromptTemplates.load(cfg.reflection.prompts_dir)
    teacher = None
    if algorithm.uses_teacher:
        teacher = Teacher(model, lambda m: make_engine(cfg.engine, model=m, tokenizer=tokenizer, device=cfg.device),
                          sync_every=cfg.teacher.sync_every, ema=cfg.teacher.ema)
    reflector = None
    if algorithm.uses_reflection and cfg.reflection.source == "model":
        reflector = Reflector(engine, tokenizer, cfg.reflection, templates)
    return CreditContext(cfg=cfg, chat=ChatTokens(tokenizer), policy=model, policy_engine=engine, catalog=catalog,
                         peers=peers, templates=templates, teacher=teacher, reflector=reflector)


def _verified_batch(trajs: list[Trajectory], adv: torch.Tensor, group_ids: torch.Tensor, batch: dict[str, torch.Tensor],
                    step: int, total_steps: int) -> VerifiedBatch:
    return VerifiedBatch(
        trajs=trajs, adv=adv, group_ids=group_ids, input_ids=batch["input_ids"].cpu(),
        attention_mask=batch["attention_mask"].cpu(), mask=batch["loss_mask"].cpu() > 0,
        turn_ids=batch["turn_ids"].cpu(), answer_mask=batch["answer_mask"].cpu() > 0,
        sampling_logp=batch["old_logp"].cpu(), step=step, total_steps=total_steps,
    )


def _postfix(metrics: dict[str, Any]) -> dict[str, str]:
    """The progress bar's numbers: reward, pass rate, eval pass@1, and AMR-SD's hint accept rate, gate and beta."""
    keys = {"reward": "train/reward_mean", "pass": "train/pass_rate", "eval": "eval/pass@1",
            "hints": "reflect/accept_rate", "gate": "amrsd/gate_frac", "beta": "amrsd/beta"}
    return {name: f"{metrics[k]:.2f}" for name, k in keys.items() if k in metrics}


def step_seed(seed: int, step: int) -> int:
    """The rollout seed of ``step``: a pure function of (seed, step), so a resumed run samples as the first did."""
    return int(np.random.default_rng([seed, step, 7]).integers(2**31))


def update_generator(seed: int, step: int) -> torch.Generator:
    """The generator of ``step``'s mini-batch shuffle (the update's row order is a pure function of seed and step)."""
    return torch.Generator().manual_seed(step_seed(seed, step) + 1)


def load_catalog(cfg: TrainConfig, sandbox: SharedSandbox | None = None) -> TaskCatalog:
    return load_env_tasks(cfg.envs, families=cfg.families, path=cfg.tasks_dir, difficulty=cfg.difficulty,
                          sandbox=sandbox)


def _resume_path(cfg: TrainConfig, root: Path) -> Path | None:
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        return ckpt.latest_checkpoint(root)
    path = Path(cfg.resume)
    if not (path / ckpt.MARKER).exists():
        raise ValueError(f"resume={cfg.resume!r} is not a complete checkpoint folder")
    return path


def lr_lambda(cfg: TrainConfig):
    total, warm = cfg.total_steps * cfg.ppo_epochs * cfg.mini_batches, cfg.lr_warmup_steps

    def f(k: int) -> float:
        if warm and k < warm:
            return (k + 1) / warm
        if cfg.lr_schedule == "constant":
            return 1.0
        frac = min(1.0, (k - warm) / max(1, total - warm))
        return 0.5 * (1 + math.cos(math.pi * frac)) if cfg.lr_schedule == "cosine" else 1.0 - frac

    return f


def _frozen_copy(cfg: TrainConfig, model: torch.nn.Module) -> torch.nn.Module:
    import copy

    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _group_std(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    return torch.stack([rewards[group_ids == g].std(unbiased=False) for g in group_ids.unique()])


def _evaluate(cfg: TrainConfig, engine, envs, catalog: TaskCatalog) -> dict[str, float]:
    """pass@1 (and pass@k) on held-out tasks: the first test instances of each family, round-robin.

    Under torchrun each rank evaluates its block of the tasks, seeded by global index, and the results are gathered:
    every rank returns the metrics one process computes."""
    t0 = time.perf_counter()
    base = envs[0].unwrapped
    task_ids, first_group = distributed.shard(base.task_ids("test", cfg.eval_tasks))
    params = SamplingParams(temperature=cfg.eval_temperature, max_new_tokens=cfg.max_new_tokens,
                            stop_strings=cfg.stop_strings, seed=cfg.seed)
    # held-out episodes must not become peers
    trajs, _ = run_group_rollouts(engine, envs, task_ids, cfg.eval_k, params, max_total_tokens=cfg.max_total_tokens,
                                  seed=cfg.seed + 10_000, first_group_id=first_group,
                                  reset_options={"record_peer": False})
    by_task: dict[str, list[bool]] = {}
    for task_id, correct in distributed.gather([(t.task_id, t.correct) for t in trajs]):
        by_task.setdefault(task_id, []).append(correct)
    p1 = float(np.mean([pass_at_k(len(v), sum(v), 1) for v in by_task.values()]))
    out = {"eval/pass@1": p1}
    if cfg.eval_k > 1:
        out[f"eval/pass@{cfg.eval_k}"] = float(np.mean([pass_at_k(len(v), sum(v), cfg.eval_k) for v in by_task.values()]))
    by_family: dict[str, list[float]] = {}
    for task_id, v in by_task.items():
        by_family.setdefault(task_id.partition("/")[0], []).append(pass_at_k(len(v), sum(v), 1))
    if len(by_family) > 1:
        out.update({f"eval/pass@1/{fam}": float(np.mean(v)) for fam, v in sorted(by_family.items())})
    out["time/eval_s"] = time.perf_counter() - t0
    return out
