"""Tests of amrsd_train.advantages: hand-computed values, loop references, docs/ALGORITHMS.md's amrsd invariants."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amrsd_train.advantages import (
    ADVANTAGE_ESTIMATORS,
    GATE_COMBINERS,
    Registry,
    amrsd_gate,
    amrsd_token_advantages,
    modulate_advantages,
    asymmetric_gate,
    beta_schedule,
    cig,
    combine_turn_gates,
    gate_stats,
    grpo_advantages,
    rlsd_token_weights,
    turn_mean,
)
from amrsd_train.losses import policy_loss

EPS = 1e-6


# ------------------------------------------------------------------ loop references
# Plain Python loops over rows and tokens, written straight from the equations, that every
# vectorised kernel is tested against.


def ref_grpo(rewards: list[float], ids: list, norm_by_std: bool = True, eps: float = EPS) -> list[float]:
    """verl's compute_grpo_outcome_advantage loop, with singleton groups -> 0."""
    groups: dict = defaultdict(list)
    for r, g in zip(rewards, ids):
        groups[g].append(r)
    out = []
    for r, g in zip(rewards, ids):
        rs = groups[g]
        if len(rs) == 1:
            out.append(0.0)
            continue
        mean = sum(rs) / len(rs)
        std = math.sqrt(sum((x - mean) ** 2 for x in rs) / (len(rs) - 1))
        out.append((r - mean) / (std + eps) if norm_by_std else r - mean)
    return out


def ref_gate(cig_rows, adv, gate_mask, tau_pos, tau_neg, g_max):
    out = []
    for row, a, mrow in zip(cig_rows, adv, gate_mask):
        s = (a > 0) - (a < 0)
        tau = tau_pos if s > 0 else tau_neg
        out.append([min(max(s * c - tau, 0.0), g_max) if (m and s != 0) else 0.0 for c, m in zip(row, mrow)])
    return out


def ref_turn_mean(values, turn_ids, mask):
    out = []
    for vrow, trow, mrow in zip(values, turn_ids, mask):
        acc: dict[int, list[float]] = defaultdict(list)
        for v, t, m in zip(vrow, trow, mrow):
            if m and t >= 0:
                acc[t].append(v)
        out.append([sum(acc[t]) / len(acc[t]) if (m and t >= 0) else 0.0 for t, m in zip(trow, mrow)])
    return out


def ref_rlsd(adv, delta, eps, mask):
    out = []
    for a, drow, mrow in zip(adv, delta, mask):
        s = (a > 0) - (a < 0)
        out.append([min(max(math.exp(s * d), 1 - eps), 1 + eps) if m else 0.0 for d, m in zip(drow, mrow)])
    return out


def ref_beta(step, total, beta_max, warmup, hold, end_frac, beta_min):
    end = end_frac * total
    if step >= end:
        return beta_min
    if step < warmup:
        return beta_max * step / warmup
    if step < warmup + hold:
        return beta_max
    p = (step - warmup - hold) / (end - warmup - hold)
    return beta_min + (beta_max - beta_min) * (1 + math.cos(math.pi * p)) / 2


def _tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------ registry


def test_registry_rejects_duplicates_and_lists_valid_names():
    reg: Registry = Registry("widget")
    reg.register("alpha")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(lambda: 2)
    with pytest.raises(ValueError, match=r"valid: alpha.*Did you mean 'alpha'"):
        reg.get("alpah")
    assert reg.names() == ("alpha",)
    assert "alpha" in reg and "beta" not in reg


def test_builtin_registries_have_expected_members():
    assert ADVANTAGE_ESTIMATORS.names() == ("dr_grpo", "grpo")
    assert GATE_COMBINERS.names() == ("max", "token", "turn")
    with pytest.raises(ValueError, match="dr_grpo, grpo"):
        ADVANTAGE_ESTIMATORS.get("ppo")


# ------------------------------------------------------------------ GRPO advantages


def test_grpo_hand_computed_one_group():
    # mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = sqrt(1/3) = 0.57735...
    adv = grpo_advantages(_tensor([1.0, 0.0, 0.0, 1.0]), [0, 0, 0, 0])
    a = 0.5 / (math.sqrt(1 / 3) + EPS)  # 0.866024...
    torch.testing.assert_close(adv, _tensor([a, -a, -a, a]), rtol=0, atol=1e-12)
    assert abs(a - 0.8660239) < 1e-6


def test_grpo_unbiased_std_noncontiguous_groups_and_singleton():
    rewards = _tensor([1.0, 0.0, 3.0, 2.0, 5.0])
    ids = torch.tensor([7, 3, 7, 3, 9])
    # group 7 = {1, 3}: mean 2, unbiased std sqrt(2) (the biased std would be 1, giving +-1)
    # group 3 = {0, 2}: mean 1, std sqrt(2); group 9 = {5} is a singleton -> 0
    d = 1 / (math.sqrt(2) + EPS)
    expected = _tensor([-d, -d, d, d, 0.0])
    torch.testing.assert_close(grpo_advantages(rewards, ids), expected, rtol=0, atol=1e-12)
    assert abs(d - 0.70710628) < 1e-8
    # the same with string task ids and with a numpy array
    torch.testing.assert_close(grpo_advantages(rewards, ["a", "b", "a", "b", "c"]), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grpo_advantages(rewards, np.array([7, 3, 7, 3, 9])), expected, rtol=0, atol=1e-12)


def test_dr_grpo_is_mean_centred_only():
    rewards = _tensor([1.0, 0.0, 3.0, 2.0, 5.0])
    adv = grpo_advantages(rewards, [7, 3, 7, 3, 9], norm_by_std=False)
    assert torch.equal(adv, _tensor([-1.0, -1.0, 1.0, 1.0, 0.0]))
    assert torch.equal(ADVANTAGE_ESTIMATORS.get("dr_grpo")(rewards, [7, 3, 7, 3, 9], EPS), adv)


def test_grpo_constant_group_and_singletons_get_zero():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 1.0, 0.3]), [0, 0, 0, 1])
    assert torch.equal(adv, torch.zeros(4))
    assert torch.equal(grpo_advantages(torch.tensor([4.0]), [0]), torch.zeros(1))


def test_grpo_integer_rewards_are_cast():
    adv = grpo_advantages(torch.tensor([1, 0]), [0, 0])
    assert adv.dtype == torch.get_default_dtype()
    a = 0.5 / (math.sqrt(0.5) + EPS)
    torch.testing.assert_close(adv, torch.tensor([a, -a]))


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_equals_loop_reference(norm_by_std):
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        n = int(torch.randint(1, 40, (1,), generator=gen))
        rewards = torch.randn(n, generator=gen, dtype=torch.float64)
        if trial % 2:  # binary rewards, like a verifier
            rewards = (rewards > 0).double()
        ids = torch.randint(0, max(1, n // 3), (n,), generator=gen)
        got = grpo_advantages(rewards, ids, norm_by_std=norm_by_std)
        want = _tensor(ref_grpo(rewards.tolist(), ids.tolist(), norm_by_std))
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_grpo_matches_trl_formula_for_contiguous_groups():
    # TRL GRPOTrainer: rewards.view(-1, G); (r - mean) / (std + eps) with torch's unbiased std
    gen = torch.Generator().manual_seed(1)
    rewards = torch.randn(6 * 4, generator=gen)
    grouped = rewards.view(-1, 4)
    trl = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + EPS)).view(-1)
    ids = torch.arange(6).repeat_interleave(4)
    torch.testing.assert_close(grpo_advantages(rewards, ids), trl, rtol=1e-5, atol=1e-6)


def test_grpo_validation():
    with pytest.raises(ValueError, match="NaN or inf"):
        grpo_advantages(torch.tensor([1.0, float("nan")]), [0, 0])
    with pytest.raises(ValueError, match="2 entries but rewards has 3"):
        grpo_advantages(torch.tensor([1.0, 0.0, 1.0]), [0, 0])
    with pytest.raises(TypeError, match="integer tensor"):
        grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        grpo_advantages(torch.ones(2, 3), [0, 0])
    with pytest.raises(ValueError, match="eps"):
        grpo_advantages(torch.tensor([1.0, 0.0]), [0, 0], eps=0.0)
    with pytest.raises(TypeError, match="hashable"):
        grpo_advantages(torch.tensor([1.0, 0.0]), [[0], [0]])


# ------------------------------------------------------------------ CIG


def test_cig_hand_computed_clipped_masked_detached():
    hint = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], requires_grad=True)
    null = torch.tensor([[-2.0, -1.0, -4.0, -0.1]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = cig(hint, null, mask, clip=2.0)
    # differences 1, -1, 3.5 (clipped to 2), masked -> 0
    assert torch.equal(out, torch.tensor([[1.0, -1.0, 2.0, 0.0]]))
    assert not out.requires_grad


def test_cig_nan_only_matters_on_masked_in_tokens():
    ninf = float("-inf")
    hint = torch.tensor([[-1.0, ninf]])
    null = torch.tensor([[-1.5, ninf]])
    assert torch.equal(cig(hint, null, torch.tensor([[1, 0]]), clip=5.0), torch.tensor([[0.5, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        cig(hint, null, torch.tensor([[1, 1]]), clip=5.0)


def test_cig_validation():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="clip"):
        cig(x, x, torch.ones(2, 3), clip=0.0)
    with pytest.raises(ValueError, match="teacher_logp_null"):
        cig(x, torch.zeros(2, 4), torch.ones(2, 3), clip=1.0)
    with pytest.raises(ValueError, match="only 0 and 1"):
        cig(x, x, torch.full((2, 3), 0.5), clip=1.0)


# ------------------------------------------------------------------ asymmetric gate


def test_asymmetric_gate_hand_computed():
    row = [1.25, 0.25, -1.5, 3.0, 0.75]
    c = torch.tensor([row, row, row])
    adv = torch.tensor([2.0, -0.5, 0.0])
    gate_mask = torch.ones(3, 5)
    gate_mask[0, 4] = 0
    g = asymmetric_gate(c, adv, gate_mask, tau_pos=0.5, tau_neg=1.0, g_max=2.0)
    expected = torch.tensor(
        [
            [0.75, 0.0, 0.0, 2.0, 0.0],  # A > 0: relu(c - 0.5), 2.5 capped at 2, last token off the gate mask
            [0.0, 0.0, 0.5, 0.0, 0.0],  # A < 0: relu(-c - 1.0)
            [0.0, 0.0, 0.0, 0.0, 0.0],  # A == 0: no gate
        ]
    )
    assert torch.equal(g, expected)


def test_asymmetric_gate_equals_loop_reference():
    gen = torch.Generator().manual_seed(2)
    for _ in range(10):
        b, t = int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(1, 12, (1,), generator=gen))
        c = torch.randn(b, t, generator=gen, dtype=torch.float64) * 2
        adv = torch.randint(-1, 2, (b,), generator=gen).double() * torch.rand(b, generator=gen, dtype=torch.float64)
        gm = torch.rand(b, t, generator=gen) > 0.3
        got = asymmetric_gate(c, adv, gm, tau_pos=0.3, tau_neg=0.8, g_max=1.5)
        want = _tensor(ref_gate(c.tolist(), adv.tolist(), gm.tolist(), 0.3, 0.8, 1.5))
        assert torch.equal(got, want)


def test_asymmetric_gate_validation():
    c = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="tau_neg"):
        asymmetric_gate(c, torch.ones(2), torch.ones(2, 3), tau_neg=-0.1)
    with pytest.raises(ValueError, match="g_max"):
        asymmetric_gate(c, torch.ones(2), torch.ones(2, 3), g_max=0.0)
    with pytest.raises(ValueError, match=r"adv_sign must have shape \[B\]"):
        asymmetric_gate(c, torch.ones(3), torch.ones(2, 3))


# ------------------------------------------------------------------ turns


def test_turn_mean_hand_computed():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]])
    turn_ids = torch.tensor([[-1, 0, 0, -1, 1, 1], [0, 0, 0, -1, -1, -1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 1, 1, 1]])
    out = turn_mean(values, turn_ids, mask)
    # row 0: turn 0 = mean(2, 3); turn 1 = only token 4 is masked in -> 5; row 1 keeps its own turn 0
    expected = torch.tensor([[0.0, 2.5, 2.5, 0.0, 5.0, 0.0], [15.0, 15.0, 0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(out, expected)


def test_turn_mean_equals_loop_reference():
    gen = torch.Generator().manual_seed(3)
    for _ in range(10):
        b, t = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(1, 15, (1,), generator=gen))
        v = torch.randn(b, t, generator=gen, dtype=torch.float64)
        tid = torch.randint(-1, 4, (b, t), generator=gen)
        m = torch.rand(b, t, generator=gen) > 0.2
        got = turn_mean(v, tid, m)
        want = _tensor(ref_turn_mean(v.tolist(), tid.tolist(), m.tolist()))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_turn_mean_all_non_assistant_and_bad_ids():
    assert torch.equal(turn_mean(torch.ones(1, 3), torch.full((1, 3), -1), torch.ones(1, 3)), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="-1 elsewhere"):
        turn_mean(torch.ones(1, 2), torch.tensor([[0, -2]]), torch.ones(1, 2))
    with pytest.raises(TypeError, match="integer"):
        turn_mean(torch.ones(1, 2), torch.zeros(1, 2), torch.ones(1, 2))


def test_combine_turn_gates_modes():
    tok = torch.tensor([[0.0, 1.0, 0.5]])
    turn = torch.tensor([[0.25, 0.25, 0.75]])
    assert torch.equal(combine_turn_gates(tok, turn, "token"), tok)
    assert torch.equal(combine_turn_gates(tok, turn, "turn"), turn)
    assert torch.equal(combine_turn_gates(tok, turn, "max"), torch.tensor([[0.25, 1.0, 0.75]]))
    with pytest.raises(ValueError, match="max, token, turn"):
        combine_turn_gates(tok, turn, "mean")


def test_amrsd_gate_turn_mode_halves_thresholds():
    c = torch.tensor([[0.5, 0.25, 3.0]])
    tid = torch.tensor([[0, 0, -1]])
    gm = torch.tensor([[1, 1, 0]])  # the last token is a tool token: never gated
    adv = torch.tensor([1.0])
    # token gate: relu(c - 0.5) = [0, 0, (masked)]; turn mean of (0.5, 0.25) = 0.375, tau 0.25 -> 0.125
    assert torch.equal(amrsd_gate(c, adv, gm, tid, "token"), torch.zeros(1, 3))
    assert torch.equal(amrsd_gate(c, adv, gm, tid, "turn"), torch.tensor([[0.125, 0.125, 0.0]]))
    assert torch.equal(amrsd_gate(c, adv, gm, tid, "max"), torch.tensor([[0.125, 0.125, 0.0]]))
    with pytest.raises(ValueError, match="turn gate mode"):
        amrsd_gate(c, adv, gm, tid, "both")


# ------------------------------------------- token advantages and the invariants of docs/ALGORITHMS.md amrsd (c)


def test_modulate_advantages_hand_computed():
    adv = torch.tensor([2.0, -1.0, 0.0])
    gate = torch.tensor([[0.0, 1.0, 2.0], [0.5, 0.0, 1.5], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]])
    out = modulate_advantages(adv, gate, beta=0.5, mask=mask)
    # A * (1 + 0.5 g): 2 * [1, 1.5, (masked)], -1 * [1.25, 1, 1.75], 0
    assert torch.equal(out, torch.tensor([[2.0, 3.0, 0.0], [-1.25, -1.0, -1.75], [0.0, 0.0, 0.0]]))


def test_modulate_advantages_validation():
    with pytest.raises(ValueError, match="beta"):
        modulate_advantages(torch.ones(1), torch.zeros(1, 2), -0.1, torch.ones(1, 2))
    with pytest.raises(ValueError, match="gate must be finite and >= 0"):
        modulate_advantages(torch.ones(1), torch.tensor([[-1.0, 0.0]]), 0.5, torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"adv must have shape \[B\]"):
        modulate_advantages(torch.ones(2), torch.zeros(1, 2), 0.5, torch.ones(1, 2))


def _random_step(seed: int, b: int = 6, t: int = 9):
    """A random batch run through the whole AMR-SD path: rewards -> A -> CIG -> gate."""
    gen = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(b, generator=gen) > 0.5).float()
    rewards[0::3], rewards[1::3] = 1.0, 0.0  # every group of 3 has a success and a failure: A != 0
    adv = grpo_advantages(rewards, torch.arange(b) // 3)
    mask = torch.rand(b, t, generator=gen) > 0.2
    mask[:, 0] = True
    c = cig(torch.randn(b, t, generator=gen) * 2, torch.randn(b, t, generator=gen) * 2, mask, clip=5.0)
    gate_mask = mask & (torch.rand(b, t, generator=gen) > 0.2)
    gate = asymmetric_gate(c, adv, gate_mask)
    logp = (torch.randn(b, t, generator=gen) * 0.3 - 1.0).requires_grad_(True)
    old = logp.detach() + torch.randn(b, t, generator=gen) * 0.3
    return adv, gate, gate_mask, mask, logp, old


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_beta_zero_is_grpo_bit_for_bit(seed, agg):
    adv, gate, _, mask, logp, old = _random_step(seed)
    assert bool((gate > 0).any()), "the test needs open gates to mean anything"
    a_hat = modulate_advantages(adv, gate, beta=0.0, mask=mask)
    assert torch.equal(a_hat, torch.where(mask, adv[:, None].expand_as(gate), torch.zeros_like(gate)))

    loss_grpo, stats_grpo = policy_loss(logp, old, adv, mask, agg=agg)
    (grad_grpo,) = torch.autograd.grad(loss_grpo, logp)
    loss_amrsd, stats_amrsd = policy_loss(logp, old, a_hat, mask, agg=agg)
    (grad_amrsd,) = torch.autograd.grad(loss_amrsd, logp)
    assert torch.equal(loss_amrsd, loss_grpo)
    assert torch.equal(grad_amrsd, grad_grpo)
    assert stats_amrsd == stats_grpo

    # and a positive beta really changes the loss (the invariant above is not vacuous)
    loss_on, _ = policy_loss(logp, old, modulate_advantages(adv, gate, 1.0, mask), mask, agg=agg)
    assert not torch.equal(loss_on, loss_grpo)


@settings(max_examples=60, deadline=None)
@given(
    adv=st.lists(st.floats(-3, 3, allow_subnormal=False), min_size=1, max_size=5),
    data=st.data(),
    beta=st.floats(0, 4),
)
def test_sign_preserved_and_magnitude_grows(adv, data, beta):
    b, t = len(adv), 4
    c = torch.tensor(data.draw(st.lists(st.floats(-5, 5), min_size=b * t, max_size=b * t))).view(b, t)
    gm = torch.tensor(data.draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))).view(b, t)
    a = torch.tensor(adv)
    gate = asymmetric_gate(c, a, gm)
    # gate is 0 where A == 0 and where gate_mask == 0, and within [0, g_max]
    assert torch.all(gate[a == 0] == 0)
    assert torch.all(gate[~gm] == 0)
    assert torch.all((gate >= 0) & (gate <= 2.0))
    mask = torch.ones(b, t, dtype=torch.bool)
    a_hat = modulate_advantages(a, gate, beta, mask)
    a_b = a[:, None].expand_as(a_hat)
    assert torch.equal(torch.sign(a_hat), torch.sign(a_b))
    assert torch.all(a_hat.abs() >= a_b.abs())


def test_full_path_invariants_on_random_batches():
    for seed in range(10):
        adv, gate, gate_mask, mask, _, _ = _random_step(seed, b=9, t=13)
        a_hat = modulate_advantages(adv, gate, 0.7, mask)
        a_b = torch.where(mask, adv[:, None].expand_as(a_hat), torch.zeros_like(a_hat))
        assert torch.equal(torch.sign(a_hat), torch.sign(a_b))
        assert torch.all(a_hat.abs() >= a_b.abs())
        assert torch.all(gate[adv == 0] == 0) and torch.all(gate[~gate_mask] == 0)
        assert torch.all(a_hat[~mask] == 0)


# ------------------------------------------------------------------ beta schedule


def test_beta_schedule_shape():
    kw = dict(total_steps=100, beta_max=1.0, warmup_steps=10, hold_steps=10, end_frac=0.6)
    assert beta_schedule(0, **kw) == 0.0
    assert beta_schedule(5, **kw) == 0.5
    assert beta_schedule(10, **kw) == 1.0
    assert beta_schedule(19, **kw) == 1.0
    assert beta_schedule(20, **kw) == 1.0  # cosine starts at its top
    assert beta_schedule(40, **kw) == pytest.approx(0.5, abs=1e-12)  # half-way through the decay
    assert 0.0 < beta_schedule(59, **kw) < 0.01
    for step in (60, 61, 99, 100, 1000):
        assert beta_schedule(step, **kw) == 0.0
    values = [beta_schedule(k, **kw) for k in range(101)]
    assert all(a <= b for a, b in zip(values[:11], values[1:11]))  # warm-up rises
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # then never rises
    for k, v in enumerate(values):
        assert v == pytest.approx(ref_beta(k, 100, 1.0, 10, 10, 0.6, 0.0), abs=1e-12)


def test_beta_schedule_beta_min_and_no_warmup():
    kw = dict(total_steps=50, beta_max=2.0, warmup_steps=0, hold_steps=0, end_frac=0.5, beta_min=0.25)
    assert beta_schedule(0, **kw) == 2.0
    assert beta_schedule(25, **kw) == 0.25 and beta_schedule(49, **kw) == 0.25
    assert beta_schedule(24, **kw) > 0.25
    # decay phase of zero length: hold until the end, then beta_min
    kw = dict(total_steps=10, beta_max=1.0, warmup_steps=2, hold_steps=4, end_frac=0.6)
    assert [beta_schedule(k, **kw) for k in range(8)] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(step=-1), "step must be >= 0"),
        (dict(total_steps=0), "total_steps"),
        (dict(end_frac=0.0), "end_frac"),
        (dict(end_frac=1.5), "end_frac"),
        (dict(beta_min=2.0), "beta_min <= beta_max"),
        (dict(warmup_steps=50, hold_steps=20), "exceeds end_frac"),
        (dict(warmup_steps=-1), "warmup_steps"),
    ],
)
def test_beta_schedule_validation(kwargs, match):
    args = dict(step=0, total_steps=100, beta_max=1.0, warmup_steps=10, hold_steps=10, end_frac=0.6, beta_min=0.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        beta_schedule(**args)


def test_beta_schedule_rejects_float_steps():
    with pytest.raises(TypeError, match="step must be an int"):
        beta_schedule(1.5, 100, 1.0, 10, 10)


# ------------------------------------------------------------------ RLSD


def test_rlsd_token_weights_hand_computed():
    delta = torch.tensor([[0.1, -0.1, 1.0], [0.1, -0.1, 1.0], [0.1, -0.1, 1.0]], dtype=torch.float64)
    adv = torch.tensor([0.7, -2.0, 0.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
    w = rlsd_token_weights(adv, delta, eps=0.2, mask=mask)
    e = math.exp
    expected = _tensor([[e(0.1), e(-0.1), 1.2], [e(-0.1), e(0.1), 0.8], [1.0, 1.0, 0.0]])
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-15)


def test_rlsd_token_weights_equal_loop_reference_and_validate():
    gen = torch.Generator().manual_seed(4)
    delta = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 50  # exercises the exp clamp
    adv = torch.randn(5, generator=gen, dtype=torch.float64)
    mask = torch.rand(5, 7, generator=gen) > 0.3
    want = _tensor(ref_rlsd(adv.tolist(), delta.tolist(), 0.1, mask.tolist()))
    torch.testing.assert_close(rlsd_token_weights(adv, delta, 0.1, mask), want, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="eps"):
        rlsd_token_weights(adv, delta, 1.0, mask)


# ------------------------------------------------------------------ stats


def test_gate_stats_hand_computed():
    gate = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.5, 0.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    c = torch.tensor([[0.25, 0.75, -0.5, 9.0], [-1.5, 0.5, 9.0, 9.0]])
    stats = gate_stats(gate, adv, mask, cig=c)
    assert stats == pytest.approx(
        {
            "amrsd/gate_frac": 2 / 5,
            "amrsd/gate_mean": 1.5 / 5,
            "amrsd/gate_frac_pos": 1 / 3,
            "amrsd/gate_frac_neg": 1 / 2,
            "amrsd/tokens_pos": 3.0,
            "amrsd/tokens_neg": 2.0,
            "amrsd/cig_mean": -0.5 / 5,
            "amrsd/cig_mean_pos": 0.5 / 3,
            "amrsd/cig_mean_neg": -0.5,
        }
    )
    assert all(isinstance(v, float) for v in stats.values())


def test_gate_stats_without_negative_rows_reports_zero_with_count():
    stats = gate_stats(torch.ones(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    assert stats["amrsd/gate_frac_neg"] == 0.0 and stats["amrsd/tokens_neg"] == 0.0
    assert stats["amrsd/gate_frac"] == 1.0
    assert "amrsd/cig_mean_pos" not in stats


# ------------------------------------------------------------------ the public amrsd_token_advantages (issue 8)


@st.composite
def _amrsd_batch(draw):
    b, t = draw(st.integers(1, 5)), draw(st.integers(1, 8))
    floats = st.floats(-4, 4, allow_subnormal=False)
    adv = torch.tensor(draw(st.lists(st.one_of(st.just(0.0), floats), min_size=b, max_size=b)))
    cig_vals = torch.tensor(draw(st.lists(st.floats(-5, 5), min_size=b * t, max_size=b * t))).view(b, t)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))).view(b, t)
    answer = torch.tensor(draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))).view(b, t)
    hinted = torch.tensor(draw(st.lists(st.booleans(), min_size=b, max_size=b)))
    # turn ids: non-decreasing along each row on assistant tokens, -1 elsewhere
    turns = torch.cumsum(torch.tensor(draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))).view(b, t), 1)
    turn_ids = torch.where(mask, turns, torch.full_like(turns, -1))
    # rows without a hint carry CIG 0 (the trainer zeroes them)
    cig_vals = torch.where(hinted[:, None] & mask, cig_vals, torch.zeros_like(cig_vals))
    return adv, cig_vals, mask, answer, turn_ids, hinted


@settings(max_examples=200, deadline=None)
@given(batch=_amrsd_batch(), beta=st.floats(0, 3), mode=st.sampled_from(["token", "turn", "max"]))
def test_amrsd_token_advantages_properties(batch, beta, mode):
    adv, c, mask, answer, turn_ids, hinted = batch
    a_hat = amrsd_token_advantages(adv, c, mask, beta=beta, answer_mask=answer, turn_ids=turn_ids, turn_gate=mode)
    a_b = adv[:, None].expand_as(a_hat)
    # sign preserved and magnitude never shrinks on every masked token
    assert torch.equal(torch.sign(a_hat[mask]), torch.sign(a_b[mask]))
    assert torch.all(a_hat[mask].abs() >= a_b[mask].abs())
    # no modulation where A == 0, without a hint, on answer spans; nothing off the mask
    assert torch.all(a_hat[~mask] == 0)
    unmodulated = mask & ((adv == 0)[:, None] | ~hinted[:, None] | answer)
    assert torch.equal(a_hat[unmodulated], a_b[unmodulated])


def test_amrsd_token_advantages_turn_gate_uses_turn_means():
    # one positive row, two assistant turns: turn 0 CIG [1.0, 0.0] (mean 0.5), turn 1 CIG [0.3, 0.3] (mean 0.3)
    adv = torch.tensor([1.0])
    c = torch.tensor([[1.0, 0.0, 0.0, 0.3, 0.3]])
    mask = torch.tensor([[1, 1, 0, 1, 1]])
    turn_ids = torch.tensor([[0, 0, -1, 1, 1]])
    token = amrsd_token_advantages(adv, c, mask, beta=1.0, turn_ids=turn_ids, turn_gate="token")
    turn = amrsd_token_advantages(adv, c, mask, beta=1.0, turn_ids=turn_ids, turn_gate="turn")
    both = amrsd_token_advantages(adv, c, mask, beta=1.0, turn_ids=turn_ids, turn_gate="max")
    # token gate: only CIG 1.0 > tau_+ 0.5 opens, g = 0.5
    assert torch.allclose(token, torch.tensor([[1.5, 1.0, 0.0, 1.0, 1.0]]))
    # turn gate: tau halved to 0.25; turn 0 mean 0.5 -> g 0.25 on both its tokens; turn 1 mean 0.3 -> g 0.05
    assert torch.allclose(turn, torch.tensor([[1.25, 1.25, 0.0, 1.05, 1.05]]))
    assert torch.allclose(both, torch.tensor([[1.5, 1.25, 0.0, 1.05, 1.05]]))


def test_amrsd_token_advantages_answer_span_and_errors():
    adv = torch.tensor([-1.0])
    c = torch.tensor([[-3.0, -3.0]])
    mask = torch.ones(1, 2)
    out = amrsd_token_advantages(adv, c, mask, beta=1.0, answer_mask=torch.tensor([[0, 1]]))
    assert torch.allclose(out, torch.tensor([[-3.0, -1.0]]))  # g = min(3 - 1, 2) = 2 on the non-answer token
    with pytest.raises(ValueError, match="needs turn_ids"):
        amrsd_token_advantages(adv, c, mask, beta=1.0, turn_gate="turn")
    with pytest.raises(ValueError, match="turn gate mode"):
        amrsd_token_advantages(adv, c, mask, beta=1.0, turn_gate="both", turn_ids=torch.zeros(1, 2, dtype=torch.long))
