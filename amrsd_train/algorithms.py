"""Algorithms: how a verified batch becomes per-token advantages (and, for some, an extra loss term).

Every algorithm is one small class registered in :data:`ALGORITHMS` under the name ``algorithm:`` takes in the
config; the trainer calls ``ALGORITHMS.get(cfg.algorithm)().credit(batch, ctx)`` and nothing else dispatches on the
name. An algorithm reads the verified batch (:class:`VerifiedBatch`: trajectories, sequence advantages ``A_i``,
masks) and the helpers it may ask for scores (:class:`CreditContext`: teacher, reflector, policy engine), and returns
:class:`Credit`: ``[B, T-1]`` token advantages for the PPO-clip loss, an optional auxiliary loss evaluated on each
micro-batch's logits, metrics, and per-token values kept for ``amrsd-train inspect``.

=================  =========================================================================================
``grpo``           ``A_hat = A_i`` on every sampled token.
``amrsd``          meta-reflection hint -> teacher CIG -> asymmetric gate -> ``A_i (1 + beta_k g_t)``.
``raw_sd``         SDPO: GRPO term (``pg_coef``) + logit distillation toward the teacher shown the raw reference
                   or a successful peer (``distill_coef``); the over-conditioned baseline.
``rlsd``           ``A_i ((1 - lambda) + lambda w_t)``, ``w_t = clip(exp(sign(A_i) delta_t), 1 +- eps)``, ``delta`` the
                   teacher-with-reference minus rollout log-prob; lambda decays linearly.
``gcpo``           ``A_i w_t``, ``w`` rank weights of the divergence between the normal prompt and a "give a wrong
                   answer" prompt (mean 1 per response).
``entropy_realloc`` ``A_i w_t``, ``w`` proportional to the policy's token entropy (mean 1 per response).
=================  =========================================================================================

Column ``t`` of every ``[B, T-1]`` tensor refers to predicting ``input_ids[:, t+1]`` (the trainer's convention).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from amrsd_train import reflection
from amrsd_train.advantages import (
    Registry,
    amrsd_token_gate,
    beta_schedule,
    cig,
    gate_stats,
    modulate_advantages,
    rlsd_token_weights,
)
from amrsd_train.baselines import entropy_realloc_weights, gcpo_token_weights, rlsd_lambda
from amrsd_train.distill import sdpo_distill_loss
from amrsd_train.losses import entropy_from_logits
from amrsd_train.rollout import ChatTokens, Trajectory
from amrsd_train.teacher import ContextSequences, Teacher, context_logprobs, context_sequences

__all__ = ["ALGORITHMS", "Algorithm", "AuxLoss", "Credit", "CreditContext", "VerifiedBatch"]


@dataclass
class VerifiedBatch:
    """One step's rollouts after verification, as tensors (``B`` trajectories, ``T`` padded length)."""

    trajs: list[Trajectory]
    adv: Tensor  # [B] sequence advantages A_i
    group_ids: Tensor  # [B]
    input_ids: Tensor  # [B, T]
    attention_mask: Tensor  # [B, T]
    mask: Tensor  # [B, T-1] bool, 1 on sampled (trained) tokens
    turn_ids: Tensor  # [B, T-1] assistant turn of each sampled token, -1 elsewhere
    answer_mask: Tensor  # [B, T-1] bool, 1 on answer-span tokens
    sampling_logp: Tensor  # [B, T-1] log-probs of the policy that sampled (0 off the mask)
    step: int
    total_steps: int

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def groups(self) -> list[list[int]]:
        """Row indices of each group, in first-seen order."""
        out: dict[int, list[int]] = {}
        for r, g in enumerate(self.group_ids.tolist()):
            out.setdefault(g, []).append(r)
        return list(out.values())

    def broadcast(self, adv: Tensor | None = None) -> Tensor:
        """``[B, T-1]``: the ``[B]`` advantages on every sampled token, 0 elsewhere."""
        a = self.adv if adv is None else adv
        return torch.where(self.mask, a[:, None].expand_as(self.mask).to(torch.float32), torch.zeros(()))


class AuxLoss(Protocol):
    """An extra loss term evaluated per micro-batch on the student's logits (gradient flows through ``logits``)."""

    def __call__(self, logits: Tensor, rows: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``logits``: ``[b, T-1, V]`` student logits of the micro-batch ``rows`` (``[b]`` indices into the batch)."""
        ...


@dataclass
class Credit:
    """What an algorithm hands back to the loop."""

    token_adv: Tensor  # [B, T-1]
    metrics: dict[str, float] = field(default_factory=dict)
    aux_loss: AuxLoss | None = None
    token_info: dict[str, Tensor] = field(default_factory=dict)  # name -> [B, T-1], for the inspect page
    hints: dict[int, reflection.HintResult | str | None] = field(default_factory=dict)  # row -> its group's hint


@dataclass
class CreditContext:
    """Everything an algorithm may use besides the batch. Built once per run by the trainer."""

    cfg: Any  # TrainConfig
    chat: ChatTokens
    policy: nn.Module
    policy_engine: Any
    catalog: Any
    peers: Any
    templates: reflection.PromptTemplates
    teacher: Teacher | None = None
    reflector: reflection.Reflector | None = None


class Algorithm(Protocol):
    """Signature of every member of :data:`ALGORITHMS`."""

    uses_teacher: bool  # the trainer builds (and checkpoints) a Teacher only when the algorithm needs one
    uses_reflection: bool

    def credit(self, batch: VerifiedBatch, ctx: CreditContext) -> Credit: ...


ALGORITHMS: Registry[type] = Registry("algorithm")


# ----------------------------------------------------------------------------------------------------------------
# shared pieces


def attempt_of(traj: Trajectory) -> reflection.Attempt:
    """One rollout as the reflection prompt sees it: answer, verdict, feedback and the agent's side of the episode."""
    v = traj.verification
    feedback = v.feedback if v is not None else "the episode ended before a final answer (turn or token limit)"
    transcript = "\n".join(f"{m['role']}: {m['content']}" for m in traj.messages[len(traj.opening):])
    return reflection.Attempt(answer=v.extracted if v is not None else None, correct=traj.correct,
                              feedback=feedback, transcript=transcript)


def diagnoses(batch: VerifiedBatch, ctx: CreditContext) -> list[tuple[list[int], reflection.Diagnosis]]:
    """(rows, diagnosis) of every group that carries a learning signal (or of every group, if so configured)."""
    out = []
    for rows in batch.groups():
        if ctx.cfg.reflection.skip_solved_groups and not bool((batch.adv[rows] != 0).any()):
            continue
        task = ctx.catalog.get(batch.trajs[rows[0]].task_id)
        attempts = [attempt_of(batch.trajs[r]) for r in rows]
        out.append((rows, reflection.diagnose(task, attempts, catalog=ctx.catalog, peer_buffer=ctx.peers)))
    return out


def privileged_openings(batch: VerifiedBatch, ctx: CreditContext, context_of: dict[int, str | None]
                        ) -> list[list[dict] | None]:
    """Per row: the opening with its context appended through the teacher template (None where it has none)."""
    return [reflection.teacher_messages(t.opening, context_of[r], ctx.templates) if context_of.get(r) else None
            for r, t in enumerate(batch.trajs)]


def raw_contexts(batch: VerifiedBatch, ctx: CreditContext) -> dict[int, str | None]:
    """Row -> the raw privileged context of its group (reference, else a successful peer), as SDPO/RLSD use it."""
    return {r: reflection.raw_context(diag) for rows, diag in diagnoses(batch, ctx) for r in rows}


def _reason_kind(reason: str) -> str:
    """A short metric key for a leak-filter reason (``reflect/reject/<kind>``)."""
    words = re.findall(r"[a-z0-9]+", reason.lower().split("'")[0])
    return "_".join(words[:3]) or "unknown"


def is_leak(verdict: reflection.LeakVerdict) -> bool:
    """A rejection because the hint gave something away (gold, option, tool argument, copied text), as opposed to a
    malformed hint (no tag, empty, too many questions)."""
    return not verdict.ok and verdict.reason.startswith(("contains", "names", "copies"))


def hint_metrics(results: list[reflection.HintResult], n_reflected: int, n_groups: int) -> dict[str, float]:
    """Hint statistics of one step: ``n_reflected`` of the step's ``n_groups`` groups were diagnosed (one result per
    group, or per attempt with ``granularity: rollout``)."""
    samples = [v for r in results for v in r.verdicts]
    rejected = Counter(_reason_kind(v.reason) for v in samples if not v.ok)
    leaks = sum(1 for v in samples if is_leak(v))
    accepted = [r for r in results if r.hint is not None]
    out = {
        "reflect/jobs": float(len(results)),
        "reflect/groups_with_signal_frac": n_reflected / max(1, n_groups),
        "reflect/accept_rate": len(accepted) / max(1, len(results)),
        "reflect/leak_rate": leaks / max(1, len(samples)),
        "reflect/samples": float(len(samples)),
        "reflect/hint_tokens": sum(r.tokens for r in accepted) / max(1, len(accepted)),
    }
    out.update({f"reflect/reject/{k}": float(v) for k, v in rejected.items()})
    return out


# ----------------------------------------------------------------------------------------------------------------
# the algorithms


@ALGORITHMS.register("grpo")
class GRPO:
    """Plain GRPO: every sampled token carries its rollout's advantage."""

    uses_teacher = False
    uses_reflection = False

    def credit(self, batch: VerifiedBatch, ctx: CreditContext) -> Credit:
        return Credit(batch.broadcast())


@ALGORITHMS.register("amrsd")
class AMRSD:
    """Meta-reflection hints, teacher CIG, asymmetric gate, annealing (docs/ALGORITHMS.md)."""

    uses_teacher = True
    uses_reflection = True

    def credit(self, batch: VerifiedBatch, ctx: CreditContext) -> Credit:
        a = ctx.cfg.amrsd
        t0 = time.perf_counter()
        hints, metrics, context_of = self.hints(batch, ctx)
        t_reflect = time.perf_counter() - t0
        openings = privileged_openings(batch, ctx, context_of)
        hinted = torch.tensor([o is not None for o in openings])
        lp_hint = context_logprobs(ctx.teacher.engine, ctx.chat, batch.trajs, openings, batch.width)
        if a.cig_baseline == "null_hint":
            null_openings = [reflection.teacher_messages(t.opening, None, ctx.templates) if o is not None else None
                             for t, o in zip(batch.trajs, openings)]
            lp_null = context_logprobs(ctx.teacher.engine, ctx.chat, batch.trajs, null_openings, batch.width)
        else:
            lp_null = batch.sampling_logp
        t_score = time.perf_counter() - t0 - t_reflect
        cig_mask = batch.mask & hinted[:, None]
        c = cig(lp_hint, lp_null, cig_mask, a.cig_clip)
        beta = beta_schedule(batch.step, batch.total_steps, a.beta_max, a.beta_warmup_steps, a.beta_hold_steps,
                             a.end_frac, a.beta_min) if a.anneal else a.beta_max
        gate = amrsd_token_gate(
            batch.adv, c, batch.mask, tau_pos=a.tau_pos, tau_neg=a.tau_pos if a.symmetric_gate else a.tau_neg,
            g_max=a.g_max, answer_mask=None if a.gate_answer_spans else batch.answer_mask, turn_ids=batch.turn_ids,
            turn_gate=a.turn_gate, turn_tau_scale=a.turn_tau_scale,
        )
        token_adv = modulate_advantages(batch.adv, gate, beta, batch.mask)
        metrics.update(gate_stats(gate, batch.adv, cig_mask, c))
        metrics.update({"amrsd/beta": float(beta), "amrsd/hinted_rows_frac": float(hinted.float().mean()),
                        "amrsd/adv_ratio_mean": _ratio_mean(token_adv, batch),
                        "time/reflect_s": t_reflect, "time/teacher_score_s": t_score})
        return Credit(token_adv, metrics, token_info={"cig": c, "gate": gate}, hints=hints)

    @staticmethod
    def hints(batch: VerifiedBatch, ctx: CreditContext):
        """Row -> hint result, metrics, and row -> the teacher context text (the accepted hint, or raw material)."""
        found = diagnoses(batch, ctx)
        granularity = ctx.cfg.reflection.granularity
        jobs, job_rows = [], []
        for rows, diag in found:
            if granularity == "group":
                jobs.append((diag, None)), job_rows.append(rows)
            else:
                for k, r in enumerate(rows):
                    jobs.append((diag, k)), job_rows.append([r])
        hints: dict[int, Any] = {}
        context_of: dict[int, str | None] = {}
        if ctx.cfg.reflection.source == "raw":
            for (diag, _), rows in zip(jobs, job_rows):
                for r in rows:
                    hints[r] = context_of[r] = reflection.raw_context(diag)
            return hints, {"reflect/jobs": float(len(jobs))}, context_of
        results = ctx.reflector.reflect(jobs, seed=_seed(ctx.cfg.seed, batch.step)) if jobs else []
        for res, rows in zip(results, job_rows):
            for r in rows:
                hints[r], context_of[r] = res, res.hint
        return hints, hint_metrics(results, len(found), len(batch.groups())), context_of


@ALGORITHMS.register("raw_sd")
class RawSD:
    """SDPO as published: logit-level self-distillation toward the teacher shown the raw reference or a peer."""

    uses_teacher = True
    uses_reflection = False

    def credit(self, batch: VerifiedBatch, ctx: CreditContext) -> Credit:
        context_of = raw_contexts(batch, ctx)
        seqs = context_sequences(ctx.chat, batch.trajs, privileged_openings(batch, ctx, context_of))
        has = torch.tensor([ids is not None for ids in seqs.ids])
        distill_mask = batch.mask & has[:, None]
        aux = _DistillToTeacher(ctx.teacher, seqs, batch, distill_mask, ctx.cfg.raw_sd, ctx.cfg.temperature)
        metrics = {"sd/context_rows_frac": float(has.float().mean())}
        return Credit(ctx.cfg.raw_sd.pg_coef * batch.broadcast(), metrics, aux_loss=aux, hints=dict(context_of))


@dataclass
class _DistillToTeacher:
    teacher: Teacher
    seqs: ContextSequences
    batch: VerifiedBatch
    mask: Tensor  # [B, T-1]
    cfg: Any  # RawSDConfig

    temperature: float = 1.0

    def __call__(self, logits: Tensor, rows: Tensor) -> tuple[Tensor, dict[str, float]]:
        idx = rows.tolist()
        teacher_logits = self.teacher.logits(self.seqs, idx, self.batch.trajs, self.batch.width, logits.device)
        # both sides at the sampling temperature, as SDPO/TRL distil the distribution that was sampled from
        logits, teacher_logits = logits / self.temperature, teacher_logits / self.temperature
        loss, stats = sdpo_distill_loss(logits, teacher_logits, self.mask[rows].to(logits.device),
                                        topk=self.cfg.topk, alpha=self.cfg.alpha)
        return self.cfg.distill_coef * loss, stats


@ALGORITHMS.register("rlsd")
class RLSD:
    """Teacher-weighted advantages: ``A ((1 - lambda) + lambda clip(exp(sign(A) delta), 1 +- eps))``."""

    uses_teacher = True
    uses_reflection = False

    def credit(self, batch: VerifiedBatch, ctx: CreditContext) -> Credit:
        r = ctx.cfg.rlsd
        context_of = raw_contexts(batch, ctx)
        openings = privileged_openings(batch, ctx, context_of)
        has = torch.tensor([o is not None for o in openings])
        lp_teacher = context_logprobs(ctx.teacher.engine, ctx.chat, batch.trajs, openings, batch.width)
        w = rlsd_token_weights(batch.adv, lp_teacher - batch.sampling_logp, r.eps, batch.mask & has[:, None])
        w = torch.where(has[:, None], w, torch.ones_like(w))
        lam = rlsd_lambda(batch.step, batch.total_steps, r.lambda_start, r.lambda_end)
        token_adv = torch.where(batch.mask, batch.broadcast() * ((1 - lam) + lam * w), torch.zeros(()))
        metrics = {"rlsd/lambda": lam, "rlsd/context_rows_frac": float(has.float().mean()),
                   "rlsd/weight_mean": float(w[batch.mask & has[:, None]].mean()) if bool(has.any()) else 1.0}
        return Credit(token_adv, metrics, token_info={"weight": w}, hints=dict(context_of))


@ALGORITHMS.register("gcpo")
class GCPO:
    """Counterfactual-prompt token weights: where a 'give a wrong answer' prompt changes the token, weight it up."""

    uses_teacher = False
    uses_reflection = False

    def credit(self, batch: VerifiedBatch, ctx: CreditContext) -> Credit:
        instruction = ctx.cfg.baselines.gcpo_prompt
        openings = [_with_instruction(t.opening, instruction) for t in batch.trajs]
        lp_cf = context_logprobs(ctx.policy_engine, ctx.chat, batch.trajs, openings, batch.width)
        w = gcpo_token_weights(batch.sampling_logp, lp_cf, batch.mask, floor=ctx.cfg.baselines.weight_floor)
        return Credit(modulate_by_weights(batch, w), {"gcpo/weight_max": float(w.max())}, token_info={"weight": w})


@ALGORITHMS.register("entropy_realloc")
class EntropyRealloc:
    """Sign-preserving reallocation of ``A_i`` over a response's tokens in proportion to the policy's entropy."""

    uses_teacher = False
    uses_reflection = False

    def credit(self, batch: VerifiedBatch, ctx: CreditContext) -> Credit:
        ent = policy_entropy(ctx.policy, batch, ctx.cfg.micro_batch_size)
        w = entropy_realloc_weights(ent, batch.mask, floor=ctx.cfg.baselines.weight_floor)
        metrics = {"entropy_realloc/entropy_mean": float(ent[batch.mask].mean()) if bool(batch.mask.any()) else 0.0}
        return Credit(modulate_by_weights(batch, w), metrics, token_info={"weight": w, "entropy": ent})


def modulate_by_weights(batch: VerifiedBatch, w: Tensor) -> Tensor:
    """``A_i * w_t`` on sampled tokens (``w > 0`` keeps the sign of ``A_i``)."""
    return torch.where(batch.mask, batch.broadcast() * w, torch.zeros(()))


def _with_instruction(opening: list[dict], instruction: str) -> list[dict]:
    out = [dict(m) for m in opening]
    user = max(i for i, m in enumerate(out) if m["role"] == "user")
    out[user]["content"] = f"{out[user]['content']}\n\n{instruction}"
    return out


@torch.no_grad()
def policy_entropy(model: nn.Module, batch: VerifiedBatch, micro: int) -> Tensor:
    """``[B, T-1]`` entropy of the policy's next-token distribution at each position (0 off the mask)."""
    out = torch.zeros(batch.mask.shape)
    device = next(model.parameters()).device
    for s in range(0, batch.input_ids.shape[0], micro):
        ids = batch.input_ids[s:s + micro].to(device)
        attn = batch.attention_mask[s:s + micro].to(device)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        out[s:s + micro] = entropy_from_logits(logits).cpu()
    return torch.where(batch.mask, out, torch.zeros(()))


def _ratio_mean(token_adv: Tensor, batch: VerifiedBatch) -> float:
    """Mean ``A_hat / A`` over sampled tokens of rows with ``A != 0`` (1.0 = no modulation)."""
    sel = batch.mask & (batch.adv != 0)[:, None]
    if not bool(sel.any()):
        return 1.0
    return float((token_adv / batch.adv[:, None].where(batch.adv[:, None] != 0, torch.ones(())))[sel].mean())


def _seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**31)
