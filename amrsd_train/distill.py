"""``raw_sd``: SDPO's logit-level self-distillation loss (pure functions).

SDPO (Hübotter et al., "Reinforcement Learning via Self-Distillation", arXiv 2601.20802) distils the policy towards
itself reprompted with privileged context (a successful peer, or the raw reference solution). On the student's own
sampled response, at every position ``t``:

1. the *support* is the student's top-``k`` tokens ``S_t = topk(z^S_t)``; the teacher is projected onto the same
   indices (its own top-``k`` may differ);
2. each side's true log-probabilities on ``S_t`` (``z - logsumexp(z)`` over the whole vocabulary) get one *tail
   bucket* holding the remaining mass ``1 - sum_{v in S_t} p_v``, a distribution over ``k + 1`` categories
   (:func:`add_tail_bucket`);
3. the per-token divergence ``D_alpha(S || T)`` on those ``k + 1`` categories (:func:`alpha_divergence`):
   ``alpha = 0`` forward KL ``KL(T || S)``, ``alpha = 1`` reverse KL ``KL(S || T)``, otherwise the generalised
   Jensen-Shannon divergence ``(1 - alpha) KL(S || M) + alpha KL(T || M)`` with ``M = (1 - alpha) S + alpha T``
   (the mixture formed in log space);
4. optionally a per-token importance weight ``min(pi / pi_old, c)`` (:func:`sdpo_is_weight`);
5. reduction as TRL's ``SDPOTrainer``: token mean within each response, then the mean over *all* ``B`` responses
   (a response with no trained token counts as 0).

The teacher is a constant: its logits are detached, so the gradient flows only into ``student_logits``.

This follows TRL 1.16 ``trl/experimental/sdpo/loss_utils.py`` (``compute_topk_self_distillation_loss`` with
``distillation_add_tail=True``, ``compute_divergence``, ``add_tail_bucket``, ``apply_importance_sampling_clipping``)
and ``SDPOTrainer._compute_self_distillation_loss``, and is tested equal to them (``tests/test_distill.py``). The
paper's own code (lasgroup/SDPO, verl ``compute_self_distillation_loss``) computes the same per-token divergence but
reduces with verl's ``token-mean`` over the batch instead.

Shapes: ``B`` responses, ``T`` padded response positions, ``V`` vocabulary, ``k`` the top-k size. Logits are the
ones that score the response tokens, already divided by the sampling temperature (TRL's ``_forward_logits``),
student and teacher aligned position by position. Masked-out positions never enter the arithmetic, so NaN or
inf in padding never reaches the loss or its gradient: :func:`sdpo_distill_loss` computes only the trained positions
(boolean indexing, which also skips the padding's work) and scatters them back into zeros.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from amrsd_train.advantages import _bool_mask, _require_2d, _require_float, _require_shape

__all__ = [
    "DistillLossResult",
    "add_tail_bucket",
    "alpha_divergence",
    "per_token_sdpo_divergence",
    "sdpo_distill_loss",
    "sdpo_is_weight",
    "topk_tail_log_probs",
]

# log(sum of top-k probabilities) is clamped below 0 so the tail bucket stays finite (log 1e-7 at worst), as TRL
_MAX_LOG_TOPK_MASS = -1e-7
# verl/TRL clamp the log-ratio of the importance weight before exp
_LOG_RATIO_CLAMP = 20.0


def _require_logits(x: object, name: str) -> Tensor:
    t = _require_float(x, name)
    if t.dim() != 3 or t.shape[-1] == 0:
        raise ValueError(f"{name} must have shape [B, T, V] with V >= 1, got {tuple(t.shape)}")
    return t


def _check_topk_alpha(topk: int, alpha: float, vocab: int) -> None:
    if isinstance(topk, bool) or not isinstance(topk, int) or not (1 <= topk <= vocab):
        raise ValueError(f"topk must be an int in [1, V] = [1, {vocab}], got {topk!r}; lower raw_sd.topk")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1] (0 forward KL, 1 reverse KL), got {alpha!r}")


def add_tail_bucket(log_probs: Tensor) -> Tensor:
    """Append one category holding the probability mass left outside a top-k support.

    ``log_probs`` ``[..., k]`` are true log-probabilities of ``k`` tokens, so they sum to ``P_k <= 1`` in
    probability; the result ``[..., k + 1]`` appends ``log(1 - P_k)`` (with ``log P_k`` clamped to at most
    ``-1e-7``, so the tail is at least ``1e-7``) and sums to 1 up to that clamp.
    """
    log_topk_mass = torch.logsumexp(log_probs, dim=-1, keepdim=True).clamp(max=_MAX_LOG_TOPK_MASS)
    log_tail = torch.log(-torch.expm1(log_topk_mass))  # log(1 - exp(x)) without cancellation
    return torch.cat([log_probs, log_tail], dim=-1)


def topk_tail_log_probs(student_logits: Tensor, teacher_logits: Tensor, topk: int) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities on the student's top-k support plus a tail bucket.

    Args:
        student_logits: ``[..., V]``.
        teacher_logits: ``[..., V]``, the same shape; detached here.
        topk: ``k`` in ``[1, V]``.

    Returns:
        ``(student, teacher)``, each ``[..., k + 1]`` log-probabilities (last category: the tail).
    """
    teacher = teacher_logits.detach()
    top_student, index = torch.topk(student_logits, k=topk, dim=-1)
    student_lp = top_student - torch.logsumexp(student_logits, dim=-1, keepdim=True)
    teacher_lp = torch.gather(teacher, -1, index) - torch.logsumexp(teacher, dim=-1, keepdim=True)
    return add_tail_bucket(student_lp), add_tail_bucket(teacher_lp)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(P || Q) = sum_v p_v (log p_v - log q_v)`` over the last dim."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def alpha_divergence(student_lp: Tensor, teacher_lp: Tensor, alpha: float) -> Tensor:
    """SDPO's divergence of the student from the teacher, interpolated by ``alpha`` (TRL ``compute_divergence``).

    * ``alpha == 0``: forward KL ``KL(T || S)``;
    * ``alpha == 1``: reverse KL ``KL(S || T)``;
    * otherwise the generalised Jensen-Shannon divergence ``(1 - alpha) KL(S || M) + alpha KL(T || M)``,
      ``log M = logaddexp(log S + log(1 - alpha), log T + log alpha)`` (``alpha = 0.5``: Jensen-Shannon).

    The interior formula tends to 0, not to a KL, as ``alpha`` approaches 0 or 1: the two end points are separate
    objectives, exactly as in TRL and the SDPO paper's code.

    Args:
        student_lp: ``[..., C]`` log-probabilities (a normalised distribution over ``C`` categories).
        teacher_lp: ``[..., C]`` log-probabilities.
        alpha: in ``[0, 1]``.

    Returns:
        ``[...]`` divergences (``>= 0``).
    """
    if alpha == 0.0:
        return _kl(teacher_lp, student_lp)
    if alpha == 1.0:
        return _kl(student_lp, teacher_lp)
    log_mix = torch.logaddexp(student_lp + math.log1p(-alpha), teacher_lp + math.log(alpha))
    return (1.0 - alpha) * _kl(student_lp, log_mix) + alpha * _kl(teacher_lp, log_mix)


def per_token_sdpo_divergence(student_logits: Tensor, teacher_logits: Tensor, *, topk: int, alpha: float) -> Tensor:
    """Per-position SDPO divergence on the student's top-k support with a tail bucket.

    ``D_t = alpha_divergence(topk_tail(log softmax z^S_t), topk_tail(log softmax z^T_t), alpha)`` with the support
    the student's top-k (see the module docstring, steps 1-3). Unmasked: padding positions are computed too.

    Args:
        student_logits: ``[B, T, V]`` student logits at the response positions (requires grad).
        teacher_logits: ``[B, T, V]`` teacher logits at the same positions (detached here).
        topk: ``k`` in ``[1, V]``.
        alpha: in ``[0, 1]``.

    Returns:
        ``[B, T]`` divergences, differentiable in ``student_logits`` only.
    """
    student = _require_logits(student_logits, "student_logits")
    teacher = _require_logits(teacher_logits, "teacher_logits")
    _require_shape(teacher, tuple(student.shape), "teacher_logits", "student_logits.shape")
    _check_topk_alpha(topk, alpha, student.shape[-1])
    student_lp, teacher_lp = topk_tail_log_probs(student, teacher, topk)
    return alpha_divergence(student_lp, teacher_lp, alpha)


@torch.no_grad()
def sdpo_is_weight(logp: Tensor, old_logp: Tensor, clip: float) -> Tensor:
    """SDPO's importance weight ``min(exp(clamp(logp - old_logp, -20, 20)), clip)``, detached.

    TRL ``apply_importance_sampling_clipping`` (``distillation_is_clip``, default 2.0): corrects the distillation
    term for the student having moved since it sampled (1 on the first on-policy update). Upper clip only.

    Args:
        logp: ``[B, T]`` current student log-probs of the sampled tokens.
        old_logp: ``[B, T]`` log-probs of the same tokens under the policy that sampled them.
        clip: the upper bound ``c > 0``.

    Returns:
        ``[B, T]`` weights in ``(0, clip]``.
    """
    lp = _require_2d(logp, "logp")
    old = _require_2d(old_logp, "old_logp")
    _require_shape(old, tuple(lp.shape), "old_logp", "logp.shape")
    if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0 (TRL's distillation_is_clip, 2.0), got {clip!r}")
    log_ratio = torch.clamp(lp - old, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return torch.exp(log_ratio).clamp(max=clip)


class DistillLossResult(NamedTuple):
    """Result of :func:`sdpo_distill_loss`: ``loss, stats = sdpo_distill_loss(...)`` also works."""

    loss: Tensor
    """Scalar loss to minimise (differentiable in ``student_logits``)."""
    stats: dict[str, float]
    """``sd/loss``, ``sd/divergence``, ``sd/tail_mass_student``, ``sd/tail_mass_teacher``."""


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x, torch.zeros_like(x)).sum() / mask.sum().clamp(min=1).to(x.dtype)


def _trl_seq_mean_token_mean(loss_mat: Tensor, mask: Tensor) -> Tensor:
    """``(1 / B) sum_b (sum_t l * m / max(sum_t m, 1))``: TRL ``SDPOTrainer``'s reduction; empty rows count as 0."""
    row_sums = torch.where(mask, loss_mat, torch.zeros_like(loss_mat)).sum(dim=-1)
    return (row_sums / mask.sum(dim=-1).clamp(min=1).to(loss_mat.dtype)).mean()


def _tail_mass(log_probs: Tensor) -> Tensor:
    return log_probs[..., -1].exp()


def _mean_or_zero(x: Tensor) -> float:
    return float(x.mean()) if x.numel() else 0.0


def sdpo_distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    *,
    topk: int,
    alpha: float,
    is_weight: Tensor | None = None,
) -> DistillLossResult:
    """SDPO's top-k + tail self-distillation loss, reduced as TRL ``SDPOTrainer`` (arXiv 2601.20802).

    ``L = (1 / B) sum_b (sum_t m_bt w_bt D_bt / max(sum_t m_bt, 1))`` with ``D`` from
    :func:`per_token_sdpo_divergence` and ``w`` the optional :func:`sdpo_is_weight` (1 when ``None``). This is a
    sequence mean of token means over all ``B`` rows, not a token mean over the batch: a row with no trained token
    (no teacher for it) adds 0 and still counts in ``B``, as in TRL. An all-zero mask gives 0 with zero gradient.

    Stats (means over trained tokens): ``sd/divergence`` the token mean of ``w * D`` (what TRL logs as
    ``self_distillation/distillation_loss``); ``sd/tail_mass_student`` and ``sd/tail_mass_teacher`` the probability
    outside the student's top-k under each model; ``sd/loss`` the returned loss.

    Args:
        student_logits: ``[B, T, V]`` student logits at the response positions (requires grad).
        teacher_logits: ``[B, T, V]`` teacher logits at the same positions, same response tokens (detached here).
        mask: ``[B, T]`` 0/1, 1 on trained tokens (and 0 on rows without a teacher).
        topk: ``k`` in ``[1, V]`` (``RawSDConfig.topk``).
        alpha: in ``[0, 1]`` (``RawSDConfig.alpha``).
        is_weight: optional ``[B, T]`` per-token weights, e.g. :func:`sdpo_is_weight`; treated as constants.

    Returns:
        :class:`DistillLossResult` ``(loss, stats)``.
    """
    student = _require_logits(student_logits, "student_logits")
    teacher = _require_logits(teacher_logits, "teacher_logits")
    _require_shape(teacher, tuple(student.shape), "teacher_logits", "student_logits.shape")
    _check_topk_alpha(topk, alpha, student.shape[-1])
    m = _bool_mask(mask, tuple(student.shape[:2]))
    # only the trained positions are computed: [N, V] -> [N, k + 1] -> [N], scattered back into [B, T] zeros
    student_lp, teacher_lp = topk_tail_log_probs(student[m], teacher[m], topk)
    per_token = student.new_zeros(m.shape).masked_scatter(m, alpha_divergence(student_lp, teacher_lp, alpha))
    if is_weight is not None:
        w = _require_2d(is_weight, "is_weight")
        _require_shape(w, tuple(m.shape), "is_weight", "[B, T]")
        per_token = per_token * torch.where(m, w.detach(), torch.zeros_like(w))
    loss = _trl_seq_mean_token_mean(per_token, m)
    with torch.no_grad():
        stats = {
            "sd/loss": float(loss),
            "sd/divergence": float(_masked_mean(per_token, m)),
            "sd/tail_mass_student": _mean_or_zero(_tail_mass(student_lp)),
            "sd/tail_mass_teacher": _mean_or_zero(_tail_mass(teacher_lp)),
        }
    return DistillLossResult(loss=loss, stats=stats)
