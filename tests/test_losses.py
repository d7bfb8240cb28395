"""Tests of amrsd_train.losses: hand-computed values, loop references, clip and aggregation semantics."""

from __future__ import annotations

import math

import pytest
import torch

from amrsd_train.losses import (
    AGGREGATORS,
    KL_ESTIMATORS,
    PolicyLossResult,
    aggregate,
    entropy_from_logits,
    kl_penalty,
    policy_loss,
)

MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


# ------------------------------------------------------------------ loop references


def ref_aggregate(loss, mask, mode, norm_len=None):
    """Plain loops over rows and tokens; empty rows are left out of sequence means."""
    rows = []
    total, count = 0.0, 0
    for lrow, mrow in zip(loss, mask):
        kept = [x for x, m in zip(lrow, mrow) if m]
        total += sum(kept)
        count += len(kept)
        if kept:
            rows.append((sum(kept), len(kept)))
    if mode == "token-mean":
        return total / count if count else 0.0
    if not rows:
        return 0.0
    if mode == "seq-mean-token-sum":
        return sum(s for s, _ in rows) / len(rows)
    if mode == "seq-mean-token-mean":
        return sum(s / n for s, n in rows) / len(rows)
    if mode == "seq-mean-token-sum-norm":
        return sum(s for s, _ in rows) / len(rows) / (norm_len or len(loss[0]))
    raise AssertionError(mode)


def ref_token_losses(logp, old, adv, clip_low, clip_high, dual_clip):
    """Per-token PPO-clip losses and clip flags from verl's formulas, one token at a time."""
    out, clipped_flags, lower_flags = [], [], []
    for lrow, orow, arow in zip(logp, old, adv):
        o_r, c_r, d_r = [], [], []
        for lp, op, a in zip(lrow, orow, arow):
            ratio = math.exp(min(max(lp - op, -20.0), 20.0))
            pg1 = -a * ratio
            pg2 = -a * min(max(ratio, 1 - clip_low), 1 + clip_high)
            loss = max(pg1, pg2)
            lower = False
            if dual_clip is not None and a < 0:
                lower = loss > -a * dual_clip
                loss = min(loss, -a * dual_clip)
            o_r.append(loss)
            c_r.append(pg2 > pg1)
            d_r.append(lower)
        out.append(o_r)
        clipped_flags.append(c_r)
        lower_flags.append(d_r)
    return out, clipped_flags, lower_flags


def ref_kl(lp, ref, kind):
    d = lp - ref
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    x = min(max(-d, -20.0), 20.0)
    return min(max(math.exp(x) - x - 1, -10.0), 10.0)


def _f64(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------ aggregation

LONG_SHORT_LOSS = [[1.0, 2.0, 3.0, 4.0], [10.0, 0.0, 0.0, 0.0]]
LONG_SHORT_MASK = [[1, 1, 1, 1], [1, 0, 0, 0]]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 4.0),  # (1+2+3+4+10) / 5 tokens
        ("seq-mean-token-sum", 10.0),  # (10 + 10) / 2 rows
        ("seq-mean-token-mean", 6.25),  # (10/4 + 10/1) / 2: the short row weighs as much as the long one
        ("seq-mean-token-sum-norm", 2.5),  # (10 + 10) / 2 rows / T=4
    ],
)
def test_aggregate_long_and_short_sequence(mode, expected):
    loss = torch.tensor(LONG_SHORT_LOSS)
    mask = torch.tensor(LONG_SHORT_MASK)
    assert aggregate(loss, mask, mode).item() == expected


def test_aggregate_norm_len_and_its_validation():
    loss, mask = torch.tensor(LONG_SHORT_LOSS), torch.tensor(LONG_SHORT_MASK)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm", norm_len=8).item() == 1.25
    with pytest.raises(ValueError, match="norm_len only applies"):
        aggregate(loss, mask, "token-mean", norm_len=8)
    with pytest.raises(ValueError, match="positive int"):
        aggregate(loss, mask, "seq-mean-token-sum-norm", norm_len=0)


def test_aggregate_empty_rows_are_left_out_and_all_empty_is_zero():
    loss = torch.tensor([*LONG_SHORT_LOSS, [5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([*LONG_SHORT_MASK, [0, 0, 0, 0]])
    for mode, expected in zip(MODES, [4.0, 10.0, 6.25, 2.5]):
        assert aggregate(loss, mask, mode).item() == expected
    x = torch.randn(2, 3, requires_grad=True)
    for mode in MODES:
        out = aggregate(x, torch.zeros(2, 3), mode)
        assert out.item() == 0.0
        (grad,) = torch.autograd.grad(out, x)
        assert torch.equal(grad, torch.zeros(2, 3))


def test_aggregate_ignores_nan_in_padding():
    loss = torch.tensor([[1.0, float("nan")], [3.0, float("inf")]], requires_grad=True)
    mask = torch.tensor([[1, 0], [1, 0]])
    for mode in MODES:
        out = aggregate(loss, mask, mode)
        assert math.isfinite(out.item())
        (grad,) = torch.autograd.grad(out, loss)
        assert torch.isfinite(grad).all() and grad[:, 1].eq(0).all()


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_equals_loop_reference(mode):
    gen = torch.Generator().manual_seed(10)
    for _ in range(15):
        b, t = int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(1, 10, (1,), generator=gen))
        loss = torch.randn(b, t, generator=gen, dtype=torch.float64)
        mask = torch.rand(b, t, generator=gen) > 0.4
        got = aggregate(loss, mask, mode).item()
        assert got == pytest.approx(ref_aggregate(loss.tolist(), mask.tolist(), mode), rel=1e-12, abs=1e-12)


def test_aggregate_validation():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm"):
        aggregate(x, torch.ones(2, 3), "seq-mean")
    with pytest.raises(ValueError, match="only 0 and 1"):
        aggregate(x, torch.full((2, 3), 0.5), "token-mean")
    with pytest.raises(ValueError, match="mask must have shape"):
        aggregate(x, torch.ones(2, 4), "token-mean")
    assert AGGREGATORS.names() == tuple(sorted(MODES))


# ------------------------------------------------------------------ KL estimators


def test_kl_hand_computed():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-2.0, -1.0]], dtype=torch.float64)
    assert torch.equal(kl_penalty(logp, ref, "k1"), _f64([[1.0, -1.0]]))
    assert torch.equal(kl_penalty(logp, ref, "k2"), _f64([[0.5, 0.5]]))
    # k3 = exp(ref - logp) - (ref - logp) - 1 with ref - logp = -1, +1
    k3 = _f64([[math.exp(-1) + 1 - 1, math.exp(1) - 1 - 1]])  # 0.367879..., 0.718281...
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), k3, rtol=0, atol=1e-15)
    assert torch.equal(kl_penalty(logp, ref, "low_var_kl"), kl_penalty(logp, ref, "k3"))


def test_k3_nonnegative_clamped_and_equal_to_loop_reference():
    gen = torch.Generator().manual_seed(11)
    logp = torch.randn(6, 20, generator=gen, dtype=torch.float64) * 8
    ref = torch.randn(6, 20, generator=gen, dtype=torch.float64) * 8
    for kind in ("k1", "k2", "k3"):
        got = kl_penalty(logp, ref, kind)
        want = _f64([[ref_kl(a, b, kind) for a, b in zip(ra, rb)] for ra, rb in zip(logp.tolist(), ref.tolist())])
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    k3 = kl_penalty(logp, ref, "k3")
    assert torch.all(k3 >= 0) and torch.all(k3 <= 10)
    # ref - logp = 30: exp(20) - 21 would be ~4.9e8; verl clamps it to 10
    assert kl_penalty(torch.tensor([[-30.0]]), torch.tensor([[0.0]]), "k3").item() == 10.0


def test_k3_gradient():
    # d k3 / d logp = 1 - exp(ref - logp)
    logp = torch.tensor([[-1.0, -0.5]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-2.0, -0.1]], dtype=torch.float64)
    (grad,) = torch.autograd.grad(kl_penalty(logp, ref, "k3").sum(), logp)
    torch.testing.assert_close(grad, _f64([[1 - math.exp(-1.0), 1 - math.exp(0.4)]]))


def test_kl_validation():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="k1, k2, k3, low_var_kl"):
        kl_penalty(x, x, "k4")
    with pytest.raises(ValueError, match="ref_logp must have the same shape"):
        kl_penalty(x, torch.zeros(1, 3), "k1")
    assert KL_ESTIMATORS.names() == ("k1", "k2", "k3", "low_var_kl")


# ------------------------------------------------------------------ policy loss

RATIOS = [1.5, 0.5, 1.0, 4.0]


def _hand_batch():
    """Rows with A = +1 and A = -1 and token ratios 1.5, 0.5, 1.0, 4.0 (old_logp = 0)."""
    logp = torch.tensor([[math.log(r) for r in RATIOS]] * 2, dtype=torch.float64, requires_grad=True)
    old = torch.zeros(2, 4, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 4)
    return logp, old, adv, mask


def test_policy_loss_hand_computed_with_dual_clip():
    logp, old, adv, mask = _hand_batch()
    result = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    assert isinstance(result, PolicyLossResult)
    # A = +1: max(-r, -clip(r, .8, 1.2)) = [-1.2 (clipped), -0.5, -1.0, -1.2 (clipped)]
    # A = -1: max(r, clip(r))          = [ 1.5, 0.8 (clipped), 1.0, 4.0 -> dual clip min(4, 3) = 3]
    # token-mean = (-3.9 + 6.3) / 8 = 0.3
    assert result.loss.item() == pytest.approx(0.3, abs=1e-12)
    assert result.stats["actor/pg_clipfrac"] == pytest.approx(3 / 8)
    assert result.stats["actor/pg_clipfrac_lower"] == pytest.approx(1 / 8)
    assert result.stats["actor/ratio_mean"] == pytest.approx(14 / 8)
    assert result.stats["actor/ppo_kl"] == pytest.approx(-math.log(3) / 4)  # -2 ln(1.5 * 0.5 * 4) / 8
    assert result.stats["actor/pg_loss"] == pytest.approx(0.3)
    # gradient: -A * r / N where the unclipped term is taken, 0 where a clip is active
    (grad,) = torch.autograd.grad(result.loss, logp)
    torch.testing.assert_close(grad, _f64([[0.0, -0.5 / 8, -1.0 / 8, 0.0], [1.5 / 8, 0.0, 1.0 / 8, 0.0]]))


def test_policy_loss_hand_computed_without_dual_clip_and_clip_higher():
    logp, old, adv, mask = _hand_batch()
    loss, stats = policy_loss(logp, old, adv, mask, dual_clip=None)
    assert loss.item() == pytest.approx((-3.9 + 7.3) / 8, abs=1e-12)  # the 4.0 token is no longer capped at 3
    assert stats["actor/pg_clipfrac_lower"] == 0.0
    loss, _ = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=None)
    # A = +1 row becomes [-1.28, -0.5, -1.0, -1.28]
    assert loss.item() == pytest.approx((-4.06 + 7.3) / 8, abs=1e-12)


def test_dual_clip_engages_only_for_negative_advantages():
    gen = torch.Generator().manual_seed(12)
    logp = torch.randn(8, 16, generator=gen, dtype=torch.float64) * 2  # many ratios far above 3
    old = torch.zeros(8, 16, dtype=torch.float64)
    adv = torch.tensor([1.0, 0.5, 2.0, 0.0, -1.0, -0.5, -2.0, -0.1], dtype=torch.float64)
    mask = torch.ones(8, 16)
    for row in range(8):
        one = mask.clone()
        one[[r for r in range(8) if r != row]] = 0
        with_dc, s_with = policy_loss(logp, old, adv, one, dual_clip=3.0)
        without, s_without = policy_loss(logp, old, adv, one, dual_clip=None)
        if adv[row] >= 0:
            assert torch.equal(with_dc, without)
            assert s_with["actor/pg_clipfrac_lower"] == 0.0
        else:
            assert with_dc.item() < without.item()
            assert s_with["actor/pg_clipfrac_lower"] > 0.0


@pytest.mark.parametrize("agg", MODES)
@pytest.mark.parametrize("dual_clip", [3.0, None])
def test_policy_loss_equals_loop_reference(agg, dual_clip):
    gen = torch.Generator().manual_seed(13)
    for _ in range(8):
        b, t = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(1, 9, (1,), generator=gen))
        logp = torch.randn(b, t, generator=gen, dtype=torch.float64)
        old = logp + torch.randn(b, t, generator=gen, dtype=torch.float64) * 0.7
        adv = torch.randn(b, t, generator=gen, dtype=torch.float64)  # token-level advantages
        mask = torch.rand(b, t, generator=gen) > 0.3
        loss, stats = policy_loss(logp, old, adv, mask, 0.2, 0.28, dual_clip, agg)
        tok, clipped, lower = ref_token_losses(logp.tolist(), old.tolist(), adv.tolist(), 0.2, 0.28, dual_clip)
        assert loss.item() == pytest.approx(ref_aggregate(tok, mask.tolist(), agg), rel=1e-10, abs=1e-12)
        n = max(int(mask.sum()), 1)
        flat = lambda rows: sum(x for r, mr in zip(rows, mask.tolist()) for x, m in zip(r, mr) if m)  # noqa: E731
        assert stats["actor/pg_clipfrac"] == pytest.approx(flat(clipped) / n)
        assert stats["actor/pg_clipfrac_lower"] == pytest.approx(flat(lower) / n)


def test_policy_loss_sequence_advantages_equal_token_broadcast():
    gen = torch.Generator().manual_seed(14)
    logp = torch.randn(3, 5, generator=gen)
    old = logp + 0.3 * torch.randn(3, 5, generator=gen)
    adv = torch.randn(3, generator=gen)
    mask = torch.rand(3, 5, generator=gen) > 0.3
    a, sa = policy_loss(logp, old, adv, mask)
    b, sb = policy_loss(logp, old, adv[:, None].expand(3, 5).contiguous(), mask)
    assert torch.equal(a, b) and sa == sb


def test_policy_loss_treats_advantages_and_old_logp_as_constants():
    logp = torch.zeros(1, 2, requires_grad=True)
    old = torch.zeros(1, 2, requires_grad=True)
    adv = torch.ones(1, requires_grad=True)
    loss, _ = policy_loss(logp, old, adv, torch.ones(1, 2))
    loss.backward()
    assert logp.grad is not None and old.grad is None and adv.grad is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(dual_clip=1.0), "dual_clip must be a finite number > 1"),
        (dict(clip_low=1.0), "clip_low"),
        (dict(clip_high=-0.1), "clip_high"),
        (dict(agg="sum"), "unknown loss aggregation mode"),
    ],
)
def test_policy_loss_validation(kwargs, match):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=match):
        policy_loss(x, x, torch.ones(2), torch.ones(2, 3), **kwargs)


def test_policy_loss_shape_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"advantages must have shape \[B\]"):
        policy_loss(x, x, torch.ones(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="old_logp must have the same shape"):
        policy_loss(x, torch.zeros(2, 4), torch.ones(2), torch.ones(2, 3))


# ------------------------------------------------------------------ entropy


def test_entropy_values():
    uniform = torch.zeros(2, 3, 7)
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2, 3), math.log(7)))
    banned = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    assert torch.equal(entropy_from_logits(banned), torch.zeros(1))
    two = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)  # p = (1/4, 3/4)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(two).item() == pytest.approx(h, abs=1e-14)
    gen = torch.Generator().manual_seed(15)
    logits = torch.randn(4, 5, 11, generator=gen, dtype=torch.float64) * 3
    want = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), want, rtol=1e-12, atol=1e-12)
