"""Cheap token-credit baselines: GCPO and entropy reallocation weights, the RLSD mixing schedule (pure functions).

Both weightings turn a sequence advantage ``A_i`` into token advantages ``A_hat_{i,t} = A_i * w_{i,t}`` with
``w > 0`` on the trained tokens and ``mean_t w_{i,t} = 1`` within each response, so ``sign(A_hat) = sign(A)`` and
each response's total credit ``sum_t A_hat_{i,t}`` is unchanged: credit moves between the tokens of a response,
never between responses. Both share one normalisation (:func:`floored_unit_mean`): raw weights scaled to mean 1
over the response's trained tokens, floored at ``floor``, scaled to mean 1 again.

* :func:`gcpo_token_weights`: GCPO (Li et al., "Guidance Contrastive Token Credit Assignment for Discrete Policy
  Optimization", arXiv 2605.29198; code jacklishufan/gcpo ``dp_actor.compute_importance_weights``);
* :func:`entropy_realloc_weights`: entropy-proportional credit, after GTPO (Tan et al., arXiv 2508.04349) and
  Wang et al., "Beyond the 80/20 Rule" (arXiv 2506.01939);
* :func:`rlsd_lambda`: the linear decay of RLSD's mixing weight ``lambda``.

Shapes: ``B`` responses, ``T`` padded tokens; a mask is ``[B, T]`` 0/1 marking trained tokens. Weights are
constants (inputs are detached) and exactly 0 off the mask; a response with no trained token gets all zeros.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from amrsd_train.advantages import _bool_mask, _require_2d, _require_shape

__all__ = [
    "GCPO_TOP_FRAC",
    "GCPO_TOP_MASS",
    "entropy_realloc_weights",
    "floored_unit_mean",
    "gcpo_k3",
    "gcpo_token_weights",
    "rank_percentiles",
    "rlsd_lambda",
]

# GCPO's "hist" normalisation: the top 40% of a response's tokens by divergence get 80% of its weight
GCPO_TOP_FRAC = 0.4
GCPO_TOP_MASS = 0.8
# GCPO clamps the log-ratio to +-20 before exp and the k3 value to +-10 (verl's low_var_kl)
_LOG_RATIO_CLAMP = 20.0
_K3_CLAMP = 10.0


def _check_floor(floor: float) -> None:
    if not (isinstance(floor, (int, float)) and 0 < floor <= 1):
        raise ValueError(f"floor must be a number in (0, 1] (the smallest token weight), got {floor!r}")


def _require_finite_on_mask(x: Tensor, mask: Tensor, name: str) -> None:
    if bool((mask & ~torch.isfinite(x)).any()):
        raise ValueError(f"{name} has NaN or inf on trained tokens (mask == 1); fix the values upstream")


def _row_mean(x: Tensor, mask: Tensor) -> Tensor:
    """``[B, 1]`` mean of ``x`` over each row's mask; 0 for an empty row."""
    total = torch.where(mask, x, torch.zeros_like(x)).sum(dim=-1, keepdim=True)
    return total / mask.sum(dim=-1, keepdim=True).clamp(min=1).to(x.dtype)


def floored_unit_mean(raw: Tensor, mask: Tensor, floor: float) -> Tensor:
    """Per-row normalisation shared by the baselines: ``w = u / mean(u)``, ``u = max(raw / mean(raw), floor)``.

    Means are over each row's trained tokens. A row whose raw weights are all 0 (no signal) gets ``w = 1`` on its
    mask. The floor acts before the last rescale, so the smallest final weight is ``floor / mean(u)``, at least
    ``floor / (1 + floor)``; the final mean is 1 exactly (up to float rounding).

    Args:
        raw: ``[B, T]`` non-negative raw weights (finite on the mask).
        mask: ``[B, T]`` bool, trained tokens.
        floor: in ``(0, 1]``.

    Returns:
        ``[B, T]`` weights, ``> 0`` with mean 1 over each non-empty row's mask, 0 off the mask.
    """
    raw = torch.where(mask, raw, torch.zeros_like(raw))
    mean = _row_mean(raw, mask)
    unit = torch.where(mean > 0, raw / torch.where(mean > 0, mean, torch.ones_like(mean)), torch.ones_like(raw))
    floored = torch.where(mask, unit.clamp(min=floor), torch.zeros_like(unit))
    return floored / _row_mean(floored, mask).clamp(min=floor)


def gcpo_k3(logp_normal: Tensor, logp_counterfactual: Tensor) -> Tensor:
    """GCPO's per-token divergence, the k3 estimator ``exp(d) - d - 1`` with ``d = logp_cf - logp_normal``.

    ``d`` is clamped to ``[-20, 20]`` and the result to ``[-10, 10]``, as GCPO's code (verl's ``low_var_kl``). With
    the token sampled from the normal-prompt policy, ``exp(d) - d - 1`` is Schulman's k3 estimate of
    ``KL(pi(. | normal) || pi(. | counterfactual))``: it is large where the "answer wrongly" instruction changes the
    token's probability in either direction, and 0 where the instruction makes no difference.

    Args:
        logp_normal: ``[B, T]`` log-probs of the sampled tokens under the task prompt.
        logp_counterfactual: ``[B, T]`` log-probs of the same tokens under the counterfactual prompt.

    Returns:
        ``[B, T]`` divergences in ``[0, 10]``.
    """
    d = torch.clamp(logp_counterfactual - logp_normal, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return torch.clamp(torch.exp(d) - d - 1, -_K3_CLAMP, _K3_CLAMP)


def rank_percentiles(values: Tensor, mask: Tensor) -> Tensor:
    """Within-row rank of each trained token's value divided by the row's count, in ``(0, 1]``.

    Ranks run from 1 (smallest) to ``N`` (largest) over the row's ``N`` trained tokens; tied values share their
    average rank (GCPO's code breaks ties by sort order, so tied tokens there get different weights). 0 off the
    mask.

    Args:
        values: ``[B, T]`` finite on the mask.
        mask: ``[B, T]`` bool.

    Returns:
        ``[B, T]`` percentiles ``rank / N``.
    """
    filled = torch.where(mask, values, torch.full_like(values, math.inf))  # padding sorts after every real value
    ordered = filled.sort(dim=-1).values.contiguous()
    below = torch.searchsorted(ordered, filled.contiguous(), side="left")
    up_to = torch.searchsorted(ordered, filled.contiguous(), side="right")
    rank = (below + up_to + 1).to(values.dtype) / 2
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1).to(values.dtype)
    return torch.where(mask, rank / count, torch.zeros_like(values))


def _gcpo_power(top_frac: float, top_mass: float) -> float:
    """Exponent ``a`` with ``1 - (1 - top_frac)^(a + 1) = top_mass``: the top fraction gets that share of ``p^a``."""
    if not (0 < top_frac < 1 and 0 < top_mass < 1 and top_mass >= top_frac):
        raise ValueError(
            f"need 0 < top_frac <= top_mass < 1 (GCPO: 0.4 and 0.8), got top_frac={top_frac}, top_mass={top_mass}"
        )
    return math.log(1 - top_mass) / math.log(1 - top_frac) - 1


@torch.no_grad()
def gcpo_token_weights(
    logp_normal: Tensor,
    logp_counterfactual: Tensor,
    mask: Tensor,
    *,
    floor: float = 0.1,
    top_frac: float = GCPO_TOP_FRAC,
    top_mass: float = GCPO_TOP_MASS,
) -> Tensor:
    """GCPO token weights: rank the k3 divergence between normal and counterfactual prompt within each response.

    ``D_t = gcpo_k3(logp_normal, logp_cf)``; ``p_t = rank(D_t) / N`` within the response (:func:`rank_percentiles`);
    ``raw_t = p_t ** a`` with ``a = log(1 - top_mass) / log(1 - top_frac) - 1`` (2.15 for GCPO's 0.4 / 0.8: the top
    40% of tokens by divergence carry 80% of the weight); ``w = floored_unit_mean(raw, mask, floor)``. Use
    ``A_hat_{i,t} = A_i * w_{i,t}``.

    GCPO's code stops at ``raw / mean(raw)``; the floor is this project's addition (config
    ``baselines.weight_floor``), so that no trained token's advantage all but vanishes.

    Args:
        logp_normal: ``[B, T]`` log-probs of the sampled tokens under the task prompt.
        logp_counterfactual: ``[B, T]`` log-probs of the same tokens under the "give a wrong answer" prompt
            (config ``baselines.gcpo_prompt``).
        mask: ``[B, T]`` 0/1 trained tokens.
        floor: smallest weight before the last rescale, in ``(0, 1]``.
        top_frac: fraction of tokens, in ``(0, 1)``, that ``top_mass`` of the weight goes to.
        top_mass: in ``[top_frac, 1)``.

    Returns:
        ``[B, T]`` weights, ``> 0`` with mean 1 over each response's trained tokens, 0 off the mask; non-decreasing
        in the divergence within a response.
    """
    normal = _require_2d(logp_normal, "logp_normal")
    counterfactual = _require_2d(logp_counterfactual, "logp_counterfactual")
    _require_shape(counterfactual, tuple(normal.shape), "logp_counterfactual", "logp_normal.shape")
    m = _bool_mask(mask, tuple(normal.shape))
    _check_floor(floor)
    power = _gcpo_power(top_frac, top_mass)
    divergence = gcpo_k3(normal, counterfactual)
    if bool((m & torch.isnan(divergence)).any()):
        raise ValueError("logp_normal/logp_counterfactual give NaN on trained tokens (mask == 1); fix them upstream")
    raw = rank_percentiles(divergence, m).pow(power)
    return floored_unit_mean(raw, m, floor)


@torch.no_grad()
def entropy_realloc_weights(entropy: Tensor, mask: Tensor, *, floor: float = 0.1) -> Tensor:
    """Entropy reallocation: token weights proportional to the policy's entropy at that token, mean 1 per response.

    ``w = floored_unit_mean(H, mask, floor)``, i.e. ``u_t = max(H_t / mean_s H_s, floor)``, ``w_t = u_t / mean_s u_s``
    (means over the response's trained tokens); a response whose entropy is 0 everywhere gets ``w = 1``. Use
    ``A_hat_{i,t} = A_i * w_{i,t}``: the same reallocation for both signs of ``A``.

    Published: entropy as the token-credit weight (GTPO, arXiv 2508.04349, normalises ``H_{i,t}`` across the group's
    responses at position ``t``; Wang et al., arXiv 2506.01939, keep the gradient of only the top 20% highest-entropy
    tokens). This project's reconstruction: normalising within the response, the floor, and mean 1 per response.

    Args:
        entropy: ``[B, T]`` non-negative entropies of the policy's next-token distributions at the sampled positions
            (e.g. :func:`amrsd_train.losses.entropy_from_logits`).
        mask: ``[B, T]`` 0/1 trained tokens.
        floor: smallest weight before the last rescale, in ``(0, 1]``.

    Returns:
        ``[B, T]`` weights, ``> 0`` with mean 1 over each response's trained tokens, 0 off the mask.
    """
    h = _require_2d(entropy, "entropy")
    m = _bool_mask(mask, tuple(h.shape))
    _check_floor(floor)
    _require_finite_on_mask(h, m, "entropy")
    if bool((m & (h < 0)).any()):
        raise ValueError("entropy must be >= 0 on trained tokens; pass entropies, not log-probs")
    return floored_unit_mean(h, m, floor)


def rlsd_lambda(step: int, total_steps: int, start: float, end: float) -> float:
    """RLSD's mixing weight: linear from ``start`` at step 0 to ``end`` at the last step, ``total_steps - 1``.

    ``lambda_k = start + (end - start) * min(k / (total_steps - 1), 1)``; ``start`` when ``total_steps == 1``.
    Used as ``A_hat = A ((1 - lambda) + lambda w)`` with ``w`` from
    :func:`amrsd_train.advantages.rlsd_token_weights` (config ``rlsd.lambda_start``, ``rlsd.lambda_end``).
    """
    for name, value in (("step", step), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if step < 0 or total_steps < 1:
        raise ValueError(f"need step >= 0 and total_steps >= 1, got step={step}, total_steps={total_steps}")
    for name, value in (("start", start), ("end", end)):
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if total_steps == 1:
        return float(start)
    progress = min(step / (total_steps - 1), 1.0)
    return float(start + (end - start) * progress)
