"""Policy-gradient losses: PPO-clip token loss, KL estimators, loss aggregation (pure functions).

Shapes: ``B`` trajectories, ``T`` padded tokens, ``V`` vocabulary. A *mask* is ``[B, T]`` of
0/1 (bool or numeric) marking the tokens that are trained (assistant-generated tokens).

The formulas follow verl ``trainer/ppo/core_algos.py`` (``compute_policy_loss_vanilla``,
``kl_penalty``, ``agg_loss``) and TRL ``GRPOTrainer``:

* ratio ``rho_t = exp(logp_t - old_logp_t)`` (log-ratio clamped to [-20, 20] as verl);
* PPO-clip ``l_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps_low, 1 + eps_high))``;
* dual-clip (Ye et al. 2019, arXiv 1912.09729) for ``A_t < 0``: ``l_t = min(l_t, -A_t * c)``;
* KL estimators k1/k2/k3 (Schulman, "Approximating KL divergence", 2020);
* aggregation modes ``token-mean``, ``seq-mean-token-sum``, ``seq-mean-token-mean``,
  ``seq-mean-token-sum-norm`` (Dr. GRPO, arXiv 2503.20783).

Masked-out positions are removed with ``torch.where`` rather than multiplied by 0, so a NaN or
inf in padding (e.g. a log-prob of -inf) can never leak into the loss or its gradient.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, Protocol

import torch
from torch import Tensor

from amrsd_train.advantages import Registry

__all__ = [
    "AGGREGATORS",
    "KL_ESTIMATORS",
    "Aggregator",
    "KLEstimator",
    "PolicyLossResult",
    "aggregate",
    "entropy_from_logits",
    "kl_penalty",
    "policy_loss",
]

AggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLKind = Literal["k1", "k2", "k3", "low_var_kl"]

# verl clamps the log-ratio before exp so one wild token cannot overflow the ratio to inf
_LOG_RATIO_CLAMP = 20.0


def _require_2d(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; cast it with .float()")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape [B, T], got {tuple(x.shape)}")
    return x


def _same_shape(x: object, like: Tensor, name: str, like_name: str) -> Tensor:
    t = _require_2d(x, name)
    if t.shape != like.shape:
        raise ValueError(f"{name} must have the same shape as {like_name} {tuple(like.shape)}, got {tuple(t.shape)}")
    return t


def _bool_mask(mask: object, like: Tensor, name: str = "mask") -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != like.shape:
        raise ValueError(f"{name} must have shape [B, T] = {tuple(like.shape)}, got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(
            f"{name} must contain only 0 and 1 (it selects tokens, it does not weight them); "
            "multiply weights into the advantages or the loss instead"
        )
    return mask != 0


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over ``mask`` (bool, same shape); 0 for an empty mask."""
    total = torch.where(mask, x, torch.zeros_like(x)).sum()
    return total / mask.sum().clamp(min=1).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


class Aggregator(Protocol):
    """Signature of every member of :data:`AGGREGATORS`.

    ``loss_mat`` ``[B, T]`` and a bool ``mask`` ``[B, T]`` -> scalar; ``norm_len`` is the
    constant length normaliser (only ``seq-mean-token-sum-norm`` reads it; always set by
    :func:`aggregate`).
    """

    def __call__(self, loss_mat: Tensor, mask: Tensor, norm_len: int) -> Tensor: ...


AGGREGATORS: Registry[Aggregator] = Registry("loss aggregation mode")


def _row_sums_and_counts(loss_mat: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    sums = torch.where(mask, loss_mat, torch.zeros_like(loss_mat)).sum(dim=-1)  # [B]
    counts = mask.sum(dim=-1).to(loss_mat.dtype)  # [B]
    return sums, counts


def _mean_over_nonempty_rows(per_row: Tensor, counts: Tensor) -> Tensor:
    # verl's agg_loss excludes fully masked rows from the sequence mean (seq_mask = counts > 0)
    nonempty = counts > 0
    return _masked_mean(per_row, nonempty)


@AGGREGATORS.register("token-mean")
def _token_mean(loss_mat: Tensor, mask: Tensor, norm_len: int) -> Tensor:
    """``sum_{b,t} l * m / sum_{b,t} m``: every token weighs the same (DAPO, TRL ``bnpo``)."""
    return _masked_mean(loss_mat, mask)


@AGGREGATORS.register("seq-mean-token-sum")
def _seq_mean_token_sum(loss_mat: Tensor, mask: Tensor, norm_len: int) -> Tensor:
    """``mean_b sum_t l * m``: over non-empty rows."""
    sums, counts = _row_sums_and_counts(loss_mat, mask)
    return _mean_over_nonempty_rows(sums, counts)


@AGGREGATORS.register("seq-mean-token-mean")
def _seq_mean_token_mean(loss_mat: Tensor, mask: Tensor, norm_len: int) -> Tensor:
    """``mean_b (sum_t l * m / len_b)``: every sequence weighs the same (original GRPO, TRL ``grpo``)."""
    sums, counts = _row_sums_and_counts(loss_mat, mask)
    return _mean_over_nonempty_rows(sums / counts.clamp(min=1), counts)


@AGGREGATORS.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(loss_mat: Tensor, mask: Tensor, norm_len: int) -> Tensor:
    """``mean_b (sum_t l * m) / norm_len``: Dr. GRPO's constant normaliser, no length bias."""
    return _seq_mean_token_sum(loss_mat, mask, norm_len) / norm_len


def aggregate(loss_mat: Tensor, mask: Tensor, mode: AggMode | str, norm_len: int | None = None) -> Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar by aggregation ``mode``.

    * ``token-mean``: ``sum(l * m) / sum(m)``;
    * ``seq-mean-token-sum``: ``mean_b sum_t l * m``;
    * ``seq-mean-token-mean``: ``mean_b (sum_t l * m / len_b)``;
    * ``seq-mean-token-sum-norm``: ``mean_b (sum_t l * m) / norm_len`` (Dr. GRPO), ``norm_len``
      defaulting to ``T``; set it to the configured max response length so the scale does not
      depend on the batch's padding.

    Empty rows (mask all 0) are left out of the ``seq-mean-*`` means, as in current verl
    ``agg_loss`` (``seq_mask = counts > 0``); an entirely empty mask gives 0 (with zero
    gradient) in every mode, as older verl's ``masked_mean`` did, rather than NaN.

    The ``-norm`` mode divides by the number of non-empty rows and by ``norm_len``, which is
    TRL's ``dr_grpo`` (``sum / (B * max_completion_length)``) and current verl; verl before
    v0.5 divided the batch sum by ``T`` only, a scale ``B`` times larger.

    Args:
        loss_mat: ``[B, T]`` per-token loss.
        mask: ``[B, T]`` 0/1 trained tokens.
        mode: a name in :data:`AGGREGATORS`.
        norm_len: positive int, only for ``seq-mean-token-sum-norm``.

    Returns:
        scalar tensor.
    """
    agg = AGGREGATORS.get(mode)
    loss = _require_2d(loss_mat, "loss_mat")
    m = _bool_mask(mask, loss)
    if norm_len is not None:
        if mode != "seq-mean-token-sum-norm":
            raise ValueError(f"norm_len only applies to mode 'seq-mean-token-sum-norm', not {mode!r}; drop it")
        if isinstance(norm_len, bool) or not isinstance(norm_len, int) or norm_len <= 0:
            raise ValueError(f"norm_len must be a positive int (the max response length), got {norm_len!r}")
    return agg(loss, m, norm_len if norm_len is not None else loss.shape[-1])


# --------------------------------------------------------------------------------------------
# KL estimators
# --------------------------------------------------------------------------------------------


class KLEstimator(Protocol):
    """Signature of every member of :data:`KL_ESTIMATORS`: ``[B, T]`` log-probs -> ``[B, T]`` KL terms."""

    def __call__(self, logp: Tensor, ref_logp: Tensor) -> Tensor: ...


KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def _k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``k1 = log pi - log pi_ref`` (unbiased, high variance, can be negative)."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def _k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``k2 = (log pi - log pi_ref)^2 / 2``."""
    return 0.5 * (logp - ref_logp).square()


def _k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1``, clamped to [-10, 10] as verl."""
    log_ratio = torch.clamp(ref_logp - logp, -20.0, 20.0)
    return torch.clamp(torch.exp(log_ratio) - log_ratio - 1, -10.0, 10.0)


# k3 is verl's "low_var_kl" (the GRPO paper's estimator); both names select the same function
KL_ESTIMATORS.register("k3")(_k3)
KL_ESTIMATORS.register("low_var_kl")(_k3)


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: KLKind | str) -> Tensor:
    """Per-token KL estimate of the policy from the reference, by estimator ``kind``.

    With ``d = logp - ref_logp``: ``k1 = d``; ``k2 = d^2 / 2``;
    ``k3 = low_var_kl = exp(-d) - (-d) - 1`` (>= 0), with ``-d`` clamped to [-20, 20] and the
    result to [-10, 10] (verl). Aggregate with :func:`aggregate` and the loss mask.

    Args:
        logp: ``[B, T]`` current-policy log-probs of the sampled tokens.
        ref_logp: ``[B, T]`` reference-policy log-probs of the same tokens.
        kind: a name in :data:`KL_ESTIMATORS`.

    Returns:
        ``[B, T]`` KL terms (differentiable in ``logp``).
    """
    estimator = KL_ESTIMATORS.get(kind)
    lp = _require_2d(logp, "logp")
    ref = _same_shape(ref_logp, lp, "ref_logp", "logp")
    return estimator(lp, ref)


# --------------------------------------------------------------------------------------------
# PPO-clip policy loss
# --------------------------------------------------------------------------------------------


class PolicyLossResult(NamedTuple):
    """Result of :func:`policy_loss`: ``loss, stats = policy_loss(...)`` also works."""

    loss: Tensor
    """Scalar loss to minimise (differentiable in ``logp``)."""
    stats: dict[str, float]
    """``actor/pg_loss``, ``actor/pg_clipfrac``, ``actor/pg_clipfrac_lower``, ``actor/ppo_kl``, ``actor/ratio_mean``."""


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    agg: AggMode | str = "token-mean",
    norm_len: int | None = None,
) -> PolicyLossResult:
    """PPO-clip policy-gradient loss with optional dual-clip, aggregated by ``agg`` (verl semantics).

    ``rho = exp(clamp(logp - old_logp, -20, 20))``;
    ``pg1 = -A * rho``; ``pg2 = -A * clamp(rho, 1 - clip_low, 1 + clip_high)``;
    ``l = max(pg1, pg2)``; for ``A < 0`` with dual-clip ``c``: ``l = min(l, -A * c)``
    (bounds the loss of a negative-advantage token whose ratio has grown past ``c``).

    Stats (masked means over trained tokens): ``actor/pg_clipfrac`` fraction where the clipped
    term is taken (``pg2 > pg1``); ``actor/pg_clipfrac_lower`` fraction where the dual clip bites
    (``A < 0`` and ``l > -A * c``; 0 when disabled); ``actor/ppo_kl`` mean of
    ``old_logp - logp`` (the clamped log-ratio, as verl); ``actor/ratio_mean``; ``actor/pg_loss``.

    Args:
        logp: ``[B, T]`` current-policy log-probs of the sampled tokens (requires grad).
        old_logp: ``[B, T]`` log-probs under the policy that sampled (no grad).
        advantages: ``[B]`` sequence advantages (broadcast over tokens) or ``[B, T]`` token
            advantages; treated as constants (detached).
        mask: ``[B, T]`` 0/1 trained tokens.
        clip_low: ``eps_low`` in ``[0, 1)``.
        clip_high: ``eps_high >= 0`` (DAPO's clip-higher uses e.g. 0.28).
        dual_clip: ``c > 1`` or ``None`` to disable.
        agg: aggregation mode, see :func:`aggregate`.
        norm_len: for ``agg="seq-mean-token-sum-norm"``, see :func:`aggregate`.

    Returns:
        :class:`PolicyLossResult` ``(loss, stats)``.
    """
    AGGREGATORS.get(agg)  # an unknown mode fails before any tensor work
    lp = _require_2d(logp, "logp")
    old = _same_shape(old_logp, lp, "old_logp", "logp")
    m = _bool_mask(mask, lp)
    if not isinstance(advantages, Tensor) or not advantages.is_floating_point():
        raise TypeError("advantages must be a floating-point torch.Tensor of shape [B] or [B, T]")
    if advantages.shape == lp.shape[:1]:
        adv = advantages.detach()[:, None]  # [B, 1], broadcast over tokens
    elif advantages.shape == lp.shape:
        adv = advantages.detach()
    else:
        raise ValueError(
            f"advantages must have shape [B] = {tuple(lp.shape[:1])} or [B, T] = {tuple(lp.shape)}, "
            f"got {tuple(advantages.shape)}"
        )
    if not (0 <= clip_low < 1 and math.isfinite(clip_low)):
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low}")
    if not (clip_high >= 0 and math.isfinite(clip_high)):
        raise ValueError(f"clip_high must be a finite number >= 0, got {clip_high}")
    if dual_clip is not None and not (dual_clip > 1 and math.isfinite(dual_clip)):
        raise ValueError(f"dual_clip must be a finite number > 1 (verl's clip_ratio_c), or None to disable; got {dual_clip}")

    log_ratio = torch.clamp(lp - old.detach(), -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clipped = torch.maximum(pg1, pg2)  # [B, T]
    clip_taken = pg2 > pg1
    if dual_clip is not None:
        pg3 = -adv * dual_clip
        negative = (adv < 0).expand_as(clipped)
        losses = torch.where(negative, torch.minimum(clipped, pg3), clipped)
        lower_taken = negative & (clipped > pg3)
    else:
        losses = clipped
        lower_taken = torch.zeros_like(m)

    loss = aggregate(losses, m, agg, norm_len)
    with torch.no_grad():
        stats = {
            "actor/pg_loss": float(loss.detach()),
            "actor/pg_clipfrac": float(_masked_mean(clip_taken.to(lp.dtype), m)),
            "actor/pg_clipfrac_lower": float(_masked_mean(lower_taken.to(lp.dtype), m)),
            "actor/ppo_kl": float(_masked_mean(-log_ratio.detach(), m)),
            "actor/ratio_mean": float(_masked_mean(ratio.detach(), m)),
        }
    return PolicyLossResult(loss=loss, stats=stats)


# --------------------------------------------------------------------------------------------
# Entropy
# --------------------------------------------------------------------------------------------


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` (``p = softmax(z)``) of the categorical over the last dim.

    Logits of ``-inf`` (banned tokens) contribute 0, not NaN.

    Args:
        logits: ``[..., V]`` unnormalised log-probabilities (e.g. ``[B, T, V]``).

    Returns:
        ``[...]`` entropy in nats (e.g. ``[B, T]``); aggregate with :func:`aggregate` for a metric.
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point torch.Tensor of shape [..., V]")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dimension, got {tuple(logits.shape)}")
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    # 0 * log 0 := 0, so a banned token (logit -inf) does not turn the sum into NaN
    plogp = torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs))
    return -plogp.sum(dim=-1)
