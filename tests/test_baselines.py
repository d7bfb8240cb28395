"""Tests of amrsd_train.baselines: GCPO and entropy token weights (mean 1, positivity, ranks, signs) and rlsd_lambda."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amrsd_train.baselines import (
    entropy_realloc_weights,
    floored_unit_mean,
    gcpo_k3,
    gcpo_token_weights,
    rank_percentiles,
    rlsd_lambda,
)

MASK = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 1, 1]])


def _row_means(w, mask):
    return [float(w[b][mask[b].bool()].mean()) for b in range(w.shape[0]) if mask[b].any()]


def _gcpo_inputs(seed, shape=(4, 6)):
    g = torch.Generator().manual_seed(seed)
    normal = -torch.rand(shape, generator=g) * 5
    return normal, normal + torch.randn(shape, generator=g)


WEIGHTS = {
    "gcpo": lambda mask, seed=0, floor=0.1: gcpo_token_weights(*_gcpo_inputs(seed, tuple(mask.shape)), mask,
                                                               floor=floor),
    "entropy": lambda mask, seed=0, floor=0.1: entropy_realloc_weights(
        torch.rand(tuple(mask.shape), generator=torch.Generator().manual_seed(seed)) * 3, mask, floor=floor),
}


# ------------------------------------------------------------------ shared invariants


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
def test_mean_one_positive_on_mask_zero_off_mask(kind):
    w = WEIGHTS[kind](MASK)
    assert _row_means(w, MASK) == pytest.approx([1.0] * 3, abs=1e-6)
    assert bool((w[MASK.bool()] > 0).all())
    assert bool((w[~MASK.bool()] == 0).all())


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
def test_single_token_row_gets_one_and_empty_row_gets_zeros(kind):
    w = WEIGHTS[kind](MASK)
    assert w[1, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert w[2].tolist() == [0.0] * 6 and bool(torch.isfinite(w).all())


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
def test_all_empty_mask_gives_zeros_without_nan(kind):
    w = WEIGHTS[kind](torch.zeros(3, 5))
    assert w.tolist() == [[0.0] * 5] * 3


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
def test_floor_bounds_the_smallest_weight(kind):
    for floor in (0.05, 0.1, 0.5, 1.0):
        w = WEIGHTS[kind](torch.ones(2, 40), seed=3, floor=floor)
        assert float(w.min()) >= floor / (1 + floor) - 1e-6


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
def test_bad_floor_raises(kind):
    for floor in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="floor must be"):
            WEIGHTS[kind](MASK, floor=floor)


def test_floored_unit_mean_of_zero_signal_is_one():
    w = floored_unit_mean(torch.zeros(2, 3), torch.tensor([[True, True, False], [False, False, False]]), 0.1)
    assert w.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


# ------------------------------------------------------------------ GCPO


def test_k3_direction_and_clamps():
    normal = torch.tensor([[-1.0, -1.0, -1.0, 0.0]])
    cf = torch.tensor([[-1.0, -2.0, 0.0, -100.0]])
    k3 = gcpo_k3(normal, cf)
    expected = [0.0, math.exp(-1) + 1 - 1, math.exp(1) - 1 - 1, math.exp(-20) + 20 - 1]
    assert k3.tolist()[0][:3] == pytest.approx(expected[:3], abs=1e-6)
    assert k3[0, 3].item() == pytest.approx(10.0)  # clamped to GCPO's 10


def test_rank_percentiles_with_ties():
    values = torch.tensor([[3.0, 1.0, 2.0, 2.0, 9.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    assert rank_percentiles(values, mask).tolist()[0] == pytest.approx([1.0, 0.25, 0.625, 0.625, 0.0])


def test_gcpo_weights_follow_the_rank_of_the_divergence():
    normal = torch.zeros(1, 5)
    cf = torch.tensor([[0.0, -0.5, 1.0, -3.0, 0.2]])  # k3 ranks: 0 < 0.2 < -0.5 < 1.0 < -3.0
    w = gcpo_token_weights(normal, cf, torch.ones(1, 5), floor=0.01)[0]
    order = torch.argsort(gcpo_k3(normal, cf)[0])
    assert bool((w[order].diff() > 0).all())
    power = math.log(0.2) / math.log(0.6) - 1  # GCPO's 40% -> 80% mass exponent
    raw = torch.tensor([(r / 5) ** power for r in range(1, 6)])
    unit = (raw / raw.mean()).clamp(min=0.01)
    assert w[order].tolist() == pytest.approx((unit / unit.mean()).tolist(), abs=1e-6)


def test_gcpo_top_fraction_gets_its_mass_for_long_responses():
    normal, cf = _gcpo_inputs(11, (1, 1000))
    w = gcpo_token_weights(normal, cf, torch.ones(1, 1000), floor=1e-6)[0]
    top = torch.topk(w, 400).values.sum() / w.sum()
    assert float(top) == pytest.approx(0.8, abs=0.01)


def test_gcpo_ignores_nan_padding_but_rejects_nan_on_mask():
    normal, cf = _gcpo_inputs(5)
    padded = normal.clone()
    padded[~MASK.bool()] = float("nan")
    assert torch.equal(gcpo_token_weights(padded, cf, MASK), gcpo_token_weights(normal, cf, MASK))
    padded[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        gcpo_token_weights(padded, cf, MASK)


def test_gcpo_bad_shapes_raise():
    with pytest.raises(ValueError, match="logp_counterfactual"):
        gcpo_token_weights(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask"):
        gcpo_token_weights(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="top_frac"):
        gcpo_token_weights(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), top_frac=0.9, top_mass=0.8)


def test_gcpo_weights_are_constants():
    normal, cf = _gcpo_inputs(1)
    w = gcpo_token_weights(normal.requires_grad_(), cf, MASK)
    assert not w.requires_grad


# ------------------------------------------------------------------ entropy reallocation


def test_entropy_weights_are_proportional_to_entropy_above_the_floor():
    h = torch.tensor([[1.0, 2.0, 3.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    w = entropy_realloc_weights(h, mask, floor=0.1)[0]
    assert w.tolist() == pytest.approx([0.5, 1.0, 1.5, 1.0, 0.0], abs=1e-6)


def test_entropy_floor_then_renormalise():
    h = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    w = entropy_realloc_weights(h, torch.ones(1, 4), floor=0.25)[0]
    unit = torch.tensor([0.25, 0.25, 2.0, 2.0])
    assert w.tolist() == pytest.approx((unit / unit.mean()).tolist(), abs=1e-6)


def test_entropy_rejects_negative_or_nan_on_mask():
    with pytest.raises(ValueError, match=">= 0"):
        entropy_realloc_weights(torch.tensor([[1.0, -0.5]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        entropy_realloc_weights(torch.tensor([[1.0, float("nan")]]), torch.ones(1, 2))
    ok = entropy_realloc_weights(torch.tensor([[1.0, float("nan")]]), torch.tensor([[1, 0]]))
    assert ok.tolist() == [[1.0, 0.0]]


# ------------------------------------------------------------------ property tests


@st.composite
def _batches(draw):
    b = draw(st.integers(1, 5))
    t = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    mask = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=t, max_size=t), min_size=b, max_size=b)))
    floor = draw(st.sampled_from([0.01, 0.1, 0.5, 1.0]))
    return mask, seed, floor


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
@settings(max_examples=150, deadline=None)
@given(batch=_batches())
def test_property_sign_preserved_and_row_mean_one(kind, batch):
    mask, seed, floor = batch
    w = WEIGHTS[kind](mask, seed=seed, floor=floor)
    adv = torch.randn(mask.shape[0], generator=torch.Generator().manual_seed(seed))[:, None]
    adv[0] = 0.0
    a_hat = adv * w
    assert bool(torch.isfinite(w).all())
    assert torch.equal(torch.sign(a_hat)[mask], torch.sign(adv).expand_as(a_hat)[mask])
    assert bool((w[~mask] == 0).all())
    assert _row_means(w, mask) == pytest.approx([1.0] * int(mask.any(dim=1).sum()), abs=1e-5)
    # credit moves within a response, never between responses
    assert a_hat.sum(dim=1).tolist() == pytest.approx((adv[:, 0] * mask.sum(dim=1)).tolist(), abs=1e-4)


@settings(max_examples=150, deadline=None)
@given(batch=_batches())
def test_property_gcpo_rank_monotone(batch):
    mask, seed, floor = batch
    normal, cf = _gcpo_inputs(seed, tuple(mask.shape))
    w = gcpo_token_weights(normal, cf, mask, floor=floor)
    k3 = gcpo_k3(normal, cf)
    for b in range(mask.shape[0]):
        d, wb = k3[b][mask[b]], w[b][mask[b]]
        higher = d[:, None] > d[None, :]
        assert bool((wb[:, None] >= wb[None, :] - 1e-6)[higher].all())


# ------------------------------------------------------------------ rlsd_lambda


def test_rlsd_lambda_linear_from_start_to_end():
    assert [rlsd_lambda(k, 5, 1.0, 0.0) for k in range(7)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0])
    assert rlsd_lambda(3, 7, 0.2, 0.8) == pytest.approx(0.5)
    assert rlsd_lambda(0, 1, 0.9, 0.1) == 0.9


@pytest.mark.parametrize(
    ("args", "error"),
    [((-1, 5, 1.0, 0.0), ValueError), ((0, 0, 1.0, 0.0), ValueError), ((0, 5, 1.5, 0.0), ValueError),
     ((0, 5, 1.0, -0.1), ValueError), ((0.5, 5, 1.0, 0.0), TypeError), ((True, 5, 1.0, 0.0), TypeError)],
)
def test_rlsd_lambda_rejects_bad_arguments(args, error):
    with pytest.raises(error):
        rlsd_lambda(*args)
