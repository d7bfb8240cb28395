"""Advantages for GRPO and AMR-SD: pure tensor functions named after the paper's terms.

Every function here is pure (no state, no I/O, no gradient through its outputs) and documents
the shape of each tensor. ``B`` is the number of trajectories in the batch, ``T`` the padded
token length. A *mask* is a ``[B, T]`` tensor of 0/1 (bool or numeric); 1 marks a token the
function acts on.

The equations are docs/ALGORITHMS.md, section amrsd:

* (GRPO)  ``A_i = (r_i - mean_g) / (std_g + eps)``, unbiased std, or Dr. GRPO ``A_i = r_i - mean_g``.
* (9b)    ``CIG_t = clamp(log pi_T(y_t | x + h) - log pi_T(y_t | x + h_null), -C, C)``.
* (9c)    ``g_t = min(ReLU(s * CIG_t - tau_s), g_max)`` with ``s = sign(A_i)``;
          ``A_hat_{i,t} = A_i * (1 + beta_k * g_t)``.
* (9d)    ``beta_k``: linear warm-up, hold, cosine decay to ``beta_min`` at ``end_frac`` of training.
* (9e)    turn gates: CIG averaged over each assistant turn, thresholds scaled (halved by default).
* (RLSD)  ``w_t = clip(exp(sign(A_i) * delta_t), 1 - eps, 1 + eps)``.

Where there is a choice of algorithm (advantage estimator, how turn gates combine with token
gates) it is made through a :class:`Registry`; nothing else dispatches on the name.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, Literal, Protocol, TypeVar

import torch
from torch import Tensor

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "GATE_COMBINERS",
    "AdvantageEstimator",
    "GateCombiner",
    "Registry",
    "amrsd_gate",
    "amrsd_token_advantages",
    "amrsd_token_gate",
    "modulate_advantages",
    "asymmetric_gate",
    "beta_schedule",
    "cig",
    "combine_turn_gates",
    "gate_stats",
    "grpo_advantages",
    "rlsd_token_weights",
    "turn_mean",
]

F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[F]):
    """A table from algorithm name to function: the only place an algorithm name is dispatched.

    Every member of one registry has the same signature (a ``Protocol`` declared next to it).
    Registering a name twice raises; looking up an unknown name raises ``ValueError`` listing the
    valid names and the closest match.

    Example::

        AGG = Registry[Aggregator]("loss aggregation mode")

        @AGG.register("token-mean")
        def _token_mean(loss_mat, mask, norm_len): ...

        AGG.get("token-mean")(loss_mat, mask, None)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._members: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name``; a name already taken raises ``ValueError``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")

        def decorator(fn: F) -> F:
            if name in self._members:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (to {self._members[name]!r}); "
                    "pick another name or remove the earlier registration"
                )
            self._members[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> F:
        """The function registered as ``name``; unknown names raise ``ValueError`` listing valid ones."""
        try:
            return self._members[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), self._members, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._members))}.{hint}"
            ) from None

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._members))

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self.names())})"


# --------------------------------------------------------------------------------------------
# Input checks. Shapes and masks are validated up front so a wrong call fails with a message
# that names the argument, instead of broadcasting silently into a wrong loss.
# --------------------------------------------------------------------------------------------


def _require_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _require_float(x: object, name: str) -> Tensor:
    t = _require_tensor(x, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}; cast it with .float()")
    return t


def _require_shape(t: Tensor, shape: tuple[int, ...], name: str, expected: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {expected} = {tuple(shape)}, got {tuple(t.shape)}")


def _require_2d(x: object, name: str) -> Tensor:
    t = _require_float(x, name)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [B, T], got {tuple(t.shape)}")
    return t


def _bool_mask(mask: object, shape: tuple[int, ...], name: str = "mask") -> Tensor:
    """``mask`` as a bool tensor of ``shape``; numeric masks must hold only 0 and 1."""
    m = _require_tensor(mask, name)
    _require_shape(m, shape, name, "[B, T]" if len(shape) == 2 else "[B]")
    if m.dtype == torch.bool:
        return m
    if m.is_complex():
        raise TypeError(f"{name} must be bool or real 0/1 values, got dtype {m.dtype}")
    if bool(((m != 0) & (m != 1)).any()):
        raise ValueError(
            f"{name} must contain only 0 and 1 (it selects tokens, it does not weight them); "
            "multiply weights into the advantages or the loss instead"
        )
    return m != 0


def _row_sign(adv_sign: object, batch: int, name: str = "adv_sign") -> Tensor:
    """``sign(A_i)`` as a float ``[B]`` tensor (accepts the advantages themselves or their signs)."""
    a = _require_tensor(adv_sign, name)
    _require_shape(a, (batch,), name, "[B]")
    if a.dtype == torch.bool or a.is_complex():
        raise TypeError(f"{name} must be a real tensor of advantages or signs, got dtype {a.dtype}")
    if a.is_floating_point() and bool(torch.isnan(a).any()):
        raise ValueError(f"{name} contains NaN; the advantages upstream are broken")
    return torch.sign(a.detach()).to(torch.get_default_dtype() if not a.is_floating_point() else a.dtype)


def _group_index(group_ids: Tensor | Iterable[Hashable], batch: int, device: torch.device) -> Tensor:
    """Dense group index ``[B]`` (0..G-1) from integer ids or any hashable labels (task ids)."""
    if isinstance(group_ids, Tensor):
        if group_ids.dtype == torch.bool or group_ids.is_floating_point() or group_ids.is_complex():
            raise TypeError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
        _require_shape(group_ids, (batch,), "group_ids", "[B]")
        return torch.unique(group_ids.to(device), return_inverse=True)[1]
    if isinstance(group_ids, (str, bytes)):
        raise TypeError("group_ids must be a sequence of ids, one per rollout, not a single string")
    try:
        labels = list(group_ids)
    except TypeError:
        raise TypeError(
            f"group_ids must be an integer tensor or a sequence of hashable ids, got {type(group_ids).__name__}"
        ) from None
    if len(labels) != batch:
        raise ValueError(f"group_ids has {len(labels)} entries but rewards has {batch}; give one id per rollout")
    dense: dict[Hashable, int] = {}
    try:
        index = [dense.setdefault(label, len(dense)) for label in labels]
    except TypeError:
        raise TypeError("group_ids entries must be hashable (ints or strings such as task ids)") from None
    return torch.tensor(index, dtype=torch.long, device=device)


# --------------------------------------------------------------------------------------------
# GRPO advantages
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor | Iterable[Hashable],
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """Group-relative advantages ``A_i`` of GRPO (or Dr. GRPO).

    ``A_i = (r_i - mean_g) / (std_g + eps)`` where ``g`` is rollout ``i``'s group, ``std_g`` the
    unbiased (n - 1) standard deviation, as ``torch.std`` and verl's
    ``compute_grpo_outcome_advantage``. With ``norm_by_std=False``: ``A_i = r_i - mean_g``
    (Dr. GRPO, arXiv 2503.20783). A group whose rewards are all equal gets 0 everywhere.

    A group of one rollout gets advantage 0: with no peer there is no baseline, so it carries no
    learning signal. (verl instead uses mean 0 and std 1 for a singleton, giving ``r / (1 + eps)``,
    which treats an unbaselined reward as an advantage.)

    Args:
        rewards: ``[B]`` scalar reward of each rollout (float; ints/bools are cast). Must be finite.
        group_ids: ``[B]`` integer tensor, or a sequence of ``B`` hashable ids (e.g. task ids).
            Groups need not be contiguous.
        norm_by_std: divide by the group std (GRPO) or not (Dr. GRPO).
        eps: added to the std before dividing; must be > 0 when ``norm_by_std``.

    Returns:
        ``[B]`` advantages, same floating dtype as ``rewards`` (default dtype for integer rewards).
    """
    r = _require_tensor(rewards, "rewards")
    if r.dim() != 1:
        raise ValueError(f"rewards must have shape [B] (one scalar per rollout), got {tuple(r.shape)}")
    if not r.is_floating_point():
        r = r.to(torch.get_default_dtype())
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards contains NaN or inf; fix the verifier/reward function that produced it")
    if norm_by_std and not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite number, got {eps}")
    index = _group_index(group_ids, r.shape[0], r.device)
    if r.shape[0] == 0:
        return r.clone()

    n_groups = int(index.max()) + 1
    counts = torch.bincount(index, minlength=n_groups).to(r.dtype)  # [G]
    sums = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, index, r)
    mean = sums / counts  # [G]
    centred = r - mean[index]  # [B]
    # a singleton's mean is its own reward, so its centred reward, and advantage, is exactly 0
    if not norm_by_std:
        return centred
    sq = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, index, centred * centred)
    # unbiased variance; the clamp only keeps a singleton's 0 / 0 out (its numerator is 0)
    std = torch.sqrt(sq / (counts - 1).clamp(min=1))  # [G]
    return centred / (std[index] + eps)


class AdvantageEstimator(Protocol):
    """Signature of every member of :data:`ADVANTAGE_ESTIMATORS`: rewards ``[B]`` -> advantages ``[B]``."""

    def __call__(self, rewards: Tensor, group_ids: Tensor | Iterable[Hashable], eps: float) -> Tensor: ...


ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


@ADVANTAGE_ESTIMATORS.register("grpo")
def _grpo(rewards: Tensor, group_ids: Tensor | Iterable[Hashable], eps: float) -> Tensor:
    """GRPO: ``(r - mean_g) / (std_g + eps)``."""
    return grpo_advantages(rewards, group_ids, norm_by_std=True, eps=eps)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def _dr_grpo(rewards: Tensor, group_ids: Tensor | Iterable[Hashable], eps: float) -> Tensor:
    """Dr. GRPO: ``r - mean_g`` (``eps`` unused; kept for the common signature)."""
    return grpo_advantages(rewards, group_ids, norm_by_std=False, eps=eps)


# --------------------------------------------------------------------------------------------
# Causal Information Gain and the asymmetric gate
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def cig(teacher_logp_hint: Tensor, teacher_logp_null: Tensor, mask: Tensor, clip: float) -> Tensor:
    """Causal Information Gain of the hint on each sampled token (docs/ALGORITHMS.md amrsd (b)).

    ``CIG_t = clamp(log pi_T(y_t | x + h, y_<t) - log pi_T(y_t | x + h_null, y_<t), -C, C)``,
    0 where ``mask == 0``. For ``cig_baseline: student`` pass the student's old log-probs as
    ``teacher_logp_null``. No gradient flows through the result.

    Args:
        teacher_logp_hint: ``[B, T]`` teacher log-prob of each sampled token given the hint.
        teacher_logp_null: ``[B, T]`` the same under the null hint ("(none)").
        mask: ``[B, T]`` 1 on tokens to score (assistant tokens of rows that have a hint).
        clip: ``C > 0``.

    Returns:
        ``[B, T]`` CIG in ``[-C, C]``, detached.
    """
    hint = _require_2d(teacher_logp_hint, "teacher_logp_hint")
    null = _require_float(teacher_logp_null, "teacher_logp_null")
    _require_shape(null, tuple(hint.shape), "teacher_logp_null", "[B, T] (same as teacher_logp_hint)")
    m = _bool_mask(mask, tuple(hint.shape))
    if not (clip > 0 and math.isfinite(clip)):
        raise ValueError(f"clip (C) must be a positive finite number, got {clip}")
    diff = torch.clamp(hint.detach() - null.detach(), -clip, clip)
    if bool(torch.isnan(diff[m]).any()):
        raise ValueError(
            "teacher log-probs give NaN on masked-in tokens (e.g. -inf minus -inf); "
            "score the same token ids under both contexts and keep padding out of the mask"
        )
    return torch.where(m, diff, torch.zeros_like(diff))


def _check_gate_params(tau_pos: float, tau_neg: float, g_max: float) -> None:
    for name, value in (("tau_pos", tau_pos), ("tau_neg", tau_neg)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if not (g_max > 0 and math.isfinite(g_max)):
        raise ValueError(f"g_max must be a positive finite number, got {g_max}")


@torch.no_grad()
def asymmetric_gate(
    cig: Tensor,
    adv_sign: Tensor,
    gate_mask: Tensor,
    tau_pos: float = 0.5,
    tau_neg: float = 1.0,
    g_max: float = 2.0,
) -> Tensor:
    """Asymmetric ReLU gate (ALGORITHMS.md amrsd (c)): ``g_t = min(ReLU(s * CIG_t - tau_s), g_max)``, ``s = sign(A_i)``.

    A positive rollout is gated where the hint made its token more likely (``CIG > tau_+``); a
    negative one where the hint made it less likely (``CIG < -tau_-``), with the stricter
    ``tau_-`` because teacher rejections are less reliable. The gate is 0 where ``A_i == 0`` and
    where ``gate_mask == 0`` (non-assistant tokens, answer-span tokens, rows without a hint).

    Args:
        cig: ``[B, T]`` CIG values (see :func:`cig`).
        adv_sign: ``[B]`` the advantages ``A_i`` or their signs; only the sign is used.
        gate_mask: ``[B, T]`` 1 where the gate may open.
        tau_pos: threshold ``tau_+ >= 0`` for ``A > 0``.
        tau_neg: threshold ``tau_- >= 0`` for ``A < 0``.
        g_max: cap ``> 0``.

    Returns:
        ``[B, T]`` gate in ``[0, g_max]``, detached.
    """
    c = _require_2d(cig, "cig")
    s = _row_sign(adv_sign, c.shape[0]).to(c.dtype)[:, None]  # [B, 1]
    m = _bool_mask(gate_mask, tuple(c.shape), "gate_mask")
    _check_gate_params(tau_pos, tau_neg, g_max)
    # full_like keeps c's dtype, so a float64 CIG is compared with a float64 threshold
    tau = torch.where(s > 0, torch.full_like(s, tau_pos), torch.full_like(s, tau_neg))  # [B, 1]
    g = torch.clamp(torch.relu(s * c.detach() - tau), max=g_max)
    return torch.where(m & (s != 0), g, torch.zeros_like(g))


@torch.no_grad()
def turn_mean(values: Tensor, turn_ids: Tensor, mask: Tensor) -> Tensor:
    """Each token's value replaced by the mean of ``values`` over its assistant turn (docs/ALGORITHMS.md amrsd (e)).

    A turn is the set of tokens of one row sharing a ``turn_id >= 0``; only tokens with
    ``mask == 1`` enter the mean and receive it. Tokens with ``turn_id == -1`` (prompt, tool,
    user) or ``mask == 0`` get 0.

    Args:
        values: ``[B, T]`` per-token values (e.g. CIG).
        turn_ids: ``[B, T]`` integer assistant-turn index per token, ``-1`` = not an assistant turn.
        mask: ``[B, T]`` 1 on tokens that take part.

    Returns:
        ``[B, T]`` turn means.
    """
    v = _require_2d(values, "values")
    tid = _require_tensor(turn_ids, "turn_ids")
    if tid.dtype == torch.bool or tid.is_floating_point() or tid.is_complex():
        raise TypeError(f"turn_ids must be an integer tensor, got dtype {tid.dtype}")
    _require_shape(tid, tuple(v.shape), "turn_ids", "[B, T] (same as values)")
    m = _bool_mask(mask, tuple(v.shape))
    if tid.numel() and int(tid.min()) < -1:
        raise ValueError("turn_ids must be >= 0 for assistant turns and -1 elsewhere")
    valid = m & (tid >= 0)  # [B, T]
    out = torch.zeros_like(v)
    if not bool(valid.any()):
        return out
    n_turns = int(tid.max()) + 1
    rows = torch.arange(v.shape[0], device=v.device)[:, None].expand_as(tid)
    key = (rows * n_turns + tid.clamp(min=0))[valid]  # [N] one slot per (row, turn)
    vals = v.detach()[valid]
    sums = torch.zeros(v.shape[0] * n_turns, dtype=v.dtype, device=v.device).index_add_(0, key, vals)
    counts = torch.zeros_like(sums).index_add_(0, key, torch.ones_like(vals))
    out[valid] = (sums / counts.clamp(min=1))[key]
    return out


class GateCombiner(Protocol):
    """Signature of every member of :data:`GATE_COMBINERS`: two ``[B, T]`` gates -> one ``[B, T]`` gate."""

    def __call__(self, token_gate: Tensor, turn_gate: Tensor) -> Tensor: ...


GATE_COMBINERS: Registry[GateCombiner] = Registry("turn gate mode")


@GATE_COMBINERS.register("token")
def _token_only(token_gate: Tensor, turn_gate: Tensor) -> Tensor:
    return token_gate


@GATE_COMBINERS.register("turn")
def _turn_only(token_gate: Tensor, turn_gate: Tensor) -> Tensor:
    return turn_gate


@GATE_COMBINERS.register("max")
def _max_gate(token_gate: Tensor, turn_gate: Tensor) -> Tensor:
    return torch.maximum(token_gate, turn_gate)


def combine_turn_gates(
    token_gate: Tensor, turn_gate: Tensor, mode: Literal["token", "turn", "max"] | str
) -> Tensor:
    """Choose or merge token and turn gates (``turn_gate: token | turn | max``, docs/ALGORITHMS.md amrsd (e)).

    Args:
        token_gate: ``[B, T]`` gate from per-token CIG.
        turn_gate: ``[B, T]`` gate from turn-averaged CIG.
        mode: a name in :data:`GATE_COMBINERS`.

    Returns:
        ``[B, T]`` gate.
    """
    combine = GATE_COMBINERS.get(mode)
    tok = _require_2d(token_gate, "token_gate")
    turn = _require_float(turn_gate, "turn_gate")
    _require_shape(turn, tuple(tok.shape), "turn_gate", "[B, T] (same as token_gate)")
    return combine(tok, turn)


@torch.no_grad()
def amrsd_gate(
    cig: Tensor,
    adv: Tensor,
    gate_mask: Tensor,
    turn_ids: Tensor,
    mode: Literal["token", "turn", "max"] | str = "token",
    tau_pos: float = 0.5,
    tau_neg: float = 1.0,
    g_max: float = 2.0,
    turn_tau_scale: float = 0.5,
) -> Tensor:
    """The full AMR-SD gate of docs/ALGORITHMS.md amrsd (c) + (e): token gate, turn gate, combined by ``mode``.

    ``token gate = asymmetric_gate(CIG, A, gate_mask, tau_+, tau_-)``;
    ``turn gate = asymmetric_gate(turn_mean(CIG, turn_ids, gate_mask), A, gate_mask,
    turn_tau_scale * tau_+, turn_tau_scale * tau_-)`` (thresholds halved by default, since a
    turn average is less extreme than single tokens); the two are merged by
    :func:`combine_turn_gates`.

    Args:
        cig: ``[B, T]`` CIG.
        adv: ``[B]`` advantages ``A_i`` (or their signs).
        gate_mask: ``[B, T]`` 1 where the gate may open.
        turn_ids: ``[B, T]`` assistant-turn index, ``-1`` elsewhere.
        mode: ``token``, ``turn`` or ``max``.
        tau_pos, tau_neg, g_max: as in :func:`asymmetric_gate`.
        turn_tau_scale: factor on both thresholds for turn gates, in ``(0, 1]``.

    Returns:
        ``[B, T]`` gate in ``[0, g_max]``.
    """
    combine = GATE_COMBINERS.get(mode)  # fail on a bad mode before any work
    if not (0 < turn_tau_scale <= 1):
        raise ValueError(f"turn_tau_scale must be in (0, 1], got {turn_tau_scale}")
    token_gate = asymmetric_gate(cig, adv, gate_mask, tau_pos, tau_neg, g_max)
    turn_cig = turn_mean(cig, turn_ids, gate_mask)
    turn_gate = asymmetric_gate(
        turn_cig, adv, gate_mask, turn_tau_scale * tau_pos, turn_tau_scale * tau_neg, g_max
    )
    return combine(token_gate, turn_gate)


# --------------------------------------------------------------------------------------------
# Token advantages, annealing, RLSD weights
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def modulate_advantages(adv: Tensor, gate: Tensor, beta: float, mask: Tensor) -> Tensor:
    """The modulation of ALGORITHMS.md amrsd (c) given a gate: ``A_hat_{i,t} = A_i * (1 + beta * g_t)``, 0 off ``mask``.

    With ``beta >= 0`` and ``g >= 0``: ``sign(A_hat) == sign(A)`` and ``|A_hat| >= |A|`` on every
    masked-in token, and ``beta == 0`` gives exactly ``A_i`` broadcast (``1 + 0 * g == 1`` in
    floating point for any finite ``g``), so the loss is GRPO's bit for bit.

    Args:
        adv: ``[B]`` sequence-level advantages ``A_i``.
        gate: ``[B, T]`` gate ``g_t >= 0`` (see :func:`asymmetric_gate`).
        beta: modulation strength ``beta_k >= 0`` (see :func:`beta_schedule`).
        mask: ``[B, T]`` 1 on tokens that are trained (the loss mask).

    Returns:
        ``[B, T]`` token advantages, detached.
    """
    g = _require_2d(gate, "gate")
    a = _require_float(adv, "adv")
    _require_shape(a, (g.shape[0],), "adv", "[B]")
    m = _bool_mask(mask, tuple(g.shape))
    if not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number >= 0 (a negative beta flips the modulation), got {beta}")
    if not bool(torch.isfinite(g).all()) or bool((g < 0).any()):
        raise ValueError("gate must be finite and >= 0; build it with asymmetric_gate")
    a_hat = a.detach()[:, None] * (1 + beta * g.detach())
    return torch.where(m, a_hat, torch.zeros_like(a_hat))


@torch.no_grad()
def amrsd_token_gate(
    adv: Tensor,
    cig: Tensor,
    mask: Tensor,
    *,
    tau_pos: float = 0.5,
    tau_neg: float = 1.0,
    g_max: float = 2.0,
    answer_mask: Tensor | None = None,
    turn_ids: Tensor | None = None,
    turn_gate: Literal["token", "turn", "max"] | str = "token",
    turn_tau_scale: float = 0.5,
) -> Tensor:
    """The gate ``g_t`` of :func:`amrsd_token_advantages` (same arguments, no ``beta``): ``[B, T]`` in ``[0, g_max]``,
    closed off ``mask``, on ``answer_mask`` tokens, where ``A_i == 0`` and where CIG is 0."""
    c = _require_2d(cig, "cig")
    m = _bool_mask(mask, tuple(c.shape))
    gate_mask = m
    if answer_mask is not None:
        gate_mask = m & ~_bool_mask(answer_mask, tuple(c.shape), "answer_mask")
    if turn_ids is None:
        if GATE_COMBINERS.get(turn_gate) is not _token_only:
            raise ValueError(f"turn_gate={turn_gate!r} needs turn_ids ([B, T], -1 off assistant turns)")
        turn_ids = torch.where(m, 0, -1)
    return amrsd_gate(c, adv, gate_mask, turn_ids, turn_gate, tau_pos, tau_neg, g_max, turn_tau_scale)


@torch.no_grad()
def amrsd_token_advantages(
    adv: Tensor,
    cig: Tensor,
    mask: Tensor,
    *,
    beta: float,
    tau_pos: float = 0.5,
    tau_neg: float = 1.0,
    g_max: float = 2.0,
    answer_mask: Tensor | None = None,
    turn_ids: Tensor | None = None,
    turn_gate: Literal["token", "turn", "max"] | str = "token",
    turn_tau_scale: float = 0.5,
) -> Tensor:
    """AMR-SD token advantages (ALGORITHMS.md amrsd (c) + (e)): the asymmetric CIG gate applied to the GRPO advantage.

    ``g_t = min(ReLU(s * CIG_t - tau_s), g_max)`` with ``s = sign(A_i)`` (or its turn-mean version, see
    :func:`amrsd_gate`), and ``A_hat_{i,t} = A_i * (1 + beta * g_t)``. The gate is closed (``g = 0``, so
    ``A_hat = A``) where ``A_i == 0``, where ``CIG == 0`` (rows without a hint carry CIG 0), on
    answer-span tokens, and ``A_hat`` is 0 off ``mask``. The gate alone is :func:`amrsd_token_gate`.

    Args:
        adv: ``[B]`` sequence advantages ``A_i``.
        cig: ``[B, T]`` Causal Information Gain of the hint on each token (see :func:`cig`).
        mask: ``[B, T]`` 1 on trained (assistant-sampled) tokens.
        beta: modulation strength ``beta_k >= 0`` (see :func:`beta_schedule`).
        tau_pos, tau_neg: gate thresholds for ``A > 0`` and ``A < 0``.
        g_max: gate cap.
        answer_mask: optional ``[B, T]``, 1 on answer-span tokens (boxed answer, final answer text,
            tool-call argument values), where the gate stays closed.
        turn_ids: ``[B, T]`` assistant-turn index (``-1`` elsewhere); needed for ``turn`` and ``max``.
        turn_gate: ``token``, ``turn`` or ``max`` (a name in :data:`GATE_COMBINERS`).
        turn_tau_scale: factor on the thresholds of turn gates.

    Returns:
        ``[B, T]`` token advantages, detached.
    """
    gate = amrsd_token_gate(adv, cig, mask, tau_pos=tau_pos, tau_neg=tau_neg, g_max=g_max, answer_mask=answer_mask,
                            turn_ids=turn_ids, turn_gate=turn_gate, turn_tau_scale=turn_tau_scale)
    return modulate_advantages(adv, gate, beta, mask)


def beta_schedule(
    step: int,
    total_steps: int,
    beta_max: float,
    warmup_steps: int,
    hold_steps: int,
    end_frac: float = 0.6,
    beta_min: float = 0.0,
) -> float:
    """Temporal annealing of the modulation strength ``beta_k`` (docs/ALGORITHMS.md amrsd (d)).

    Piecewise in the training step ``k``, with ``E = end_frac * total_steps``:

    * ``k < warmup_steps``: linear warm-up from 0, ``beta_max * k / warmup_steps``;
    * ``k < warmup_steps + hold_steps``: ``beta_max``;
    * ``k < E``: cosine decay ``beta_min + (beta_max - beta_min) * (1 + cos(pi * p)) / 2`` with
      ``p = (k - warmup - hold) / (E - warmup - hold)``;
    * ``k >= E``: exactly ``beta_min`` (0 by default: plain GRPO from then on).

    Raises ``ValueError`` on arguments that cannot describe such a schedule.
    """
    for name, value in (("step", step), ("total_steps", total_steps), ("warmup_steps", warmup_steps),
                        ("hold_steps", hold_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if warmup_steps < 0 or hold_steps < 0:
        raise ValueError(f"warmup_steps and hold_steps must be >= 0, got {warmup_steps} and {hold_steps}")
    if not (0 < end_frac <= 1):
        raise ValueError(f"end_frac must be in (0, 1], got {end_frac}")
    if not (math.isfinite(beta_max) and math.isfinite(beta_min) and 0 <= beta_min <= beta_max):
        raise ValueError(f"need 0 <= beta_min <= beta_max (finite), got beta_min={beta_min}, beta_max={beta_max}")
    end = end_frac * total_steps
    decay_start = warmup_steps + hold_steps
    if decay_start > end:
        raise ValueError(
            f"warmup_steps + hold_steps = {decay_start} exceeds end_frac * total_steps = {end:g}; "
            "shorten the warm-up/hold or raise end_frac"
        )
    if step >= end:
        return float(beta_min)
    if step < warmup_steps:
        return beta_max * step / warmup_steps
    if step < decay_start:
        return float(beta_max)
    progress = (step - decay_start) / (end - decay_start)
    return beta_min + (beta_max - beta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def rlsd_token_weights(adv_sign: Tensor, delta: Tensor, eps: float, mask: Tensor) -> Tensor:
    """RLSD teacher weights ``w_t = clip(exp(sign(A_i) * delta_t), 1 - eps, 1 + eps)``, 0 where ``mask == 0``.

    ``delta_t`` is the teacher-minus-student log-prob of the sampled token; the weight leans the
    update towards tokens the teacher prefers on positive rollouts and away on negative ones,
    within ``1 +- eps``. Rows with ``A_i == 0`` get weight 1.

    Args:
        adv_sign: ``[B]`` the advantages or their signs.
        delta: ``[B, T]`` log-prob differences.
        eps: clip half-width in ``(0, 1)``.
        mask: ``[B, T]`` 1 on trained tokens.

    Returns:
        ``[B, T]`` weights in ``[1 - eps, 1 + eps]`` (0 off the mask), detached.
    """
    d = _require_2d(delta, "delta")
    s = _row_sign(adv_sign, d.shape[0]).to(d.dtype)[:, None]
    m = _bool_mask(mask, tuple(d.shape))
    if not (0 < eps < 1):
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    # clamp the exponent first so exp never overflows; the clip to 1 +- eps makes this exact
    w = torch.clamp(torch.exp(torch.clamp(s * d.detach(), -20.0, 20.0)), 1 - eps, 1 + eps)
    return torch.where(m, w, torch.zeros_like(w))


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def gate_stats(gate: Tensor, adv: Tensor, mask: Tensor, cig: Tensor | None = None) -> dict[str, float]:
    """Gate sparsity and CIG by advantage sign, as namespaced floats for the step log.

    Keys (all over tokens with ``mask == 1``):

    * ``amrsd/gate_frac``: fraction of tokens with ``g > 0`` (docs/ALGORITHMS.md: sparsity is logged);
    * ``amrsd/gate_mean``: mean ``g``;
    * ``amrsd/gate_frac_pos`` / ``amrsd/gate_frac_neg``: ``g > 0`` fraction in rows with ``A > 0`` / ``A < 0``;
    * ``amrsd/tokens_pos`` / ``amrsd/tokens_neg``: how many tokens those fractions are over;
    * with ``cig``: ``amrsd/cig_mean_pos`` / ``amrsd/cig_mean_neg`` (mean CIG by sign of A) and
      ``amrsd/cig_mean``.

    A mean over zero tokens is reported as 0.0; the ``tokens_*`` counts tell it apart.

    Args:
        gate: ``[B, T]`` gate.
        adv: ``[B]`` advantages.
        mask: ``[B, T]`` tokens to count (usually the loss mask).
        cig: optional ``[B, T]`` CIG.
    """
    g = _require_2d(gate, "gate")
    s = _row_sign(adv, g.shape[0], "adv")[:, None]
    m = _bool_mask(mask, tuple(g.shape))
    pos = m & (s > 0)
    neg = m & (s < 0)

    def frac(sel: Tensor, x: Tensor) -> float:
        n = int(sel.sum())
        return float(x[sel].sum()) / n if n else 0.0

    opened = (g > 0).to(g.dtype)
    stats = {
        "amrsd/gate_frac": frac(m, opened),
        "amrsd/gate_mean": frac(m, g),
        "amrsd/gate_frac_pos": frac(pos, opened),
        "amrsd/gate_frac_neg": frac(neg, opened),
        "amrsd/tokens_pos": float(pos.sum()),
        "amrsd/tokens_neg": float(neg.sum()),
    }
    if cig is not None:
        c = _require_float(cig, "cig")
        _require_shape(c, tuple(g.shape), "cig", "[B, T] (same as gate)")
        stats["amrsd/cig_mean"] = frac(m, c)
        stats["amrsd/cig_mean_pos"] = frac(pos, c)
        stats["amrsd/cig_mean_neg"] = frac(neg, c)
    return stats
