"""Tests of amrsd_train.distill (raw_sd / SDPO): hand-computed values, a loop reference, masking, gradients, and
equality with TRL's own SDPO loss run in TRL's venv."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from amrsd_train.distill import (
    DistillLossResult,
    add_tail_bucket,
    alpha_divergence,
    per_token_sdpo_divergence,
    sdpo_distill_loss,
    sdpo_is_weight,
)

REPO = Path(__file__).resolve().parents[1]
ALPHAS = [0.0, 0.3, 0.5, 1.0]


# ------------------------------------------------------------------ loop reference


def ref_divergence(student_row, teacher_row, topk, alpha):
    """One position, plain Python in float64: student's top-k support, tail bucket, alpha-divergence."""

    def probs(logits):
        top = max(logits)
        exps = [math.exp(z - top) for z in logits]
        total = sum(exps)
        return [e / total for e in exps]

    ps, pt = probs(student_row), probs(teacher_row)
    support = sorted(range(len(ps)), key=lambda v: -student_row[v])[:topk]
    s = [ps[v] for v in support] + [max(1 - sum(ps[v] for v in support), 1 - math.exp(-1e-7))]
    t = [pt[v] for v in support] + [max(1 - sum(pt[v] for v in support), 1 - math.exp(-1e-7))]

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    if alpha == 0.0:
        return kl(t, s)
    if alpha == 1.0:
        return kl(s, t)
    mix = [(1 - alpha) * a + alpha * b for a, b in zip(s, t)]
    return (1 - alpha) * kl(s, mix) + alpha * kl(t, mix)


def ref_loss(per_token, mask):
    """TRL's reduction with loops: per-row token mean, then the mean over all rows (empty rows add 0)."""
    rows = []
    for prow, mrow in zip(per_token, mask):
        kept = [x for x, m in zip(prow, mrow) if m]
        rows.append(sum(kept) / len(kept) if kept else 0.0)
    return sum(rows) / len(rows)


def _logits_of(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float64)).view(1, 1, -1)


# ------------------------------------------------------------------ hand-checked values


def test_hand_checked_topk1_forward_and_reverse_kl():
    # student (0.5, 0.3, 0.2), teacher (0.2, 0.5, 0.3); top-1 of the student is token 0, so the two-category
    # distributions are S = (0.5, 0.5) and T = (0.2, 0.8)
    s, t = _logits_of([0.5, 0.3, 0.2]), _logits_of([0.2, 0.5, 0.3])
    forward = 0.2 * math.log(0.2 / 0.5) + 0.8 * math.log(0.8 / 0.5)
    reverse = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    assert per_token_sdpo_divergence(s, t, topk=1, alpha=0.0).item() == pytest.approx(forward, abs=1e-9)
    assert per_token_sdpo_divergence(s, t, topk=1, alpha=1.0).item() == pytest.approx(reverse, abs=1e-9)
    m = [0.5 * 0.5 + 0.5 * 0.2, 0.5 * 0.5 + 0.5 * 0.8]
    jsd = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.5 * (
        0.2 * math.log(0.2 / m[0]) + 0.8 * math.log(0.8 / m[1])
    )
    assert per_token_sdpo_divergence(s, t, topk=1, alpha=0.5).item() == pytest.approx(jsd, abs=1e-9)


def test_support_is_the_students_topk_not_the_teachers():
    # the teacher's best token (2) is outside the student's top-1 (token 0), so it lands in the teacher's tail
    s, t = _logits_of([0.6, 0.3, 0.1]), _logits_of([0.1, 0.1, 0.8])
    expected = 0.1 * math.log(0.1 / 0.6) + 0.9 * math.log(0.9 / 0.4)
    assert per_token_sdpo_divergence(s, t, topk=1, alpha=0.0).item() == pytest.approx(expected, abs=1e-9)


def test_tail_bucket_holds_the_leftover_mass():
    lp = torch.log(torch.tensor([[0.5, 0.2]], dtype=torch.float64))
    out = add_tail_bucket(lp)
    assert out.shape == (1, 3)
    assert out.exp().tolist()[0] == pytest.approx([0.5, 0.2, 0.3], abs=1e-12)
    full = add_tail_bucket(torch.log(torch.tensor([[0.25, 0.75]], dtype=torch.float64)))
    assert full.exp()[0, -1].item() == pytest.approx(1e-7, rel=1e-3)  # clamped, never log(0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_equals_loop_reference(alpha):
    g = torch.Generator().manual_seed(7)
    s = torch.randn(3, 4, 9, generator=g, dtype=torch.float64) * 2
    t = torch.randn(3, 4, 9, generator=g, dtype=torch.float64) * 2
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    got = per_token_sdpo_divergence(s, t, topk=3, alpha=alpha)
    ref = [[ref_divergence(s[b, i].tolist(), t[b, i].tolist(), 3, alpha) for i in range(4)] for b in range(3)]
    assert got.tolist() == [pytest.approx(row, abs=1e-10) for row in ref]
    loss, stats = sdpo_distill_loss(s, t, mask, topk=3, alpha=alpha)
    assert loss.item() == pytest.approx(ref_loss(ref, mask.tolist()), abs=1e-10)
    token_mean = sum(ref[b][i] for b in range(3) for i in range(4) if mask[b, i]) / int(mask.sum())
    assert stats["sd/divergence"] == pytest.approx(token_mean, abs=1e-10)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_identical_logits_give_zero(alpha):
    z = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(1))
    loss, stats = sdpo_distill_loss(z, z.clone(), torch.ones(2, 3), topk=4, alpha=alpha)
    assert abs(loss.item()) < 1e-6 and abs(stats["sd/divergence"]) < 1e-6


@pytest.mark.parametrize("alpha", ALPHAS)
def test_divergence_is_non_negative(alpha):
    g = torch.Generator().manual_seed(3)
    d = per_token_sdpo_divergence(torch.randn(4, 5, 20, generator=g), torch.randn(4, 5, 20, generator=g),
                                  topk=5, alpha=alpha)
    assert bool((d > -1e-6).all())


def test_alpha_divergence_end_points_are_the_two_kls():
    s = torch.log(torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64))
    t = torch.log(torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64))
    forward = sum(b * math.log(b / a) for a, b in zip([0.7, 0.2, 0.1], [0.3, 0.3, 0.4]))
    reverse = sum(a * math.log(a / b) for a, b in zip([0.7, 0.2, 0.1], [0.3, 0.3, 0.4]))
    assert alpha_divergence(s, t, 0.0).item() == pytest.approx(forward, abs=1e-12)
    assert alpha_divergence(s, t, 1.0).item() == pytest.approx(reverse, abs=1e-12)
    assert alpha_divergence(s, t, 1e-6).item() < 1e-5  # the interior formula vanishes near the end points


# ------------------------------------------------------------------ gradients and masking


def test_gradient_flows_only_into_the_student():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 3, 8, generator=g).requires_grad_()
    t = torch.randn(2, 3, 8, generator=g).requires_grad_()
    loss, _ = sdpo_distill_loss(s, t, torch.ones(2, 3), topk=3, alpha=0.5)
    loss.backward()
    assert t.grad is None
    assert s.grad is not None and float(s.grad.abs().sum()) > 0


def test_masked_positions_contribute_nothing_even_nan():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 4, 8, generator=g)
    t = torch.randn(2, 4, 8, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 0]])
    base, base_stats = sdpo_distill_loss(s, t, mask, topk=3, alpha=0.5)
    s2, t2 = s.clone(), t.clone()
    s2[0, 2:] = float("nan")
    t2[1, 0] = float("inf")
    s2.requires_grad_()
    loss, stats = sdpo_distill_loss(s2, t2, mask, topk=3, alpha=0.5)
    assert loss.item() == pytest.approx(base.item(), abs=1e-7) and stats == pytest.approx(base_stats, abs=1e-7)
    loss.backward()
    assert torch.isfinite(s2.grad).all()
    assert float(s2.grad[0, 2:].abs().sum()) == 0.0 and float(s2.grad[1, 0].abs().sum()) == 0.0


def test_empty_mask_gives_zero_loss_and_zero_gradient():
    s = torch.randn(2, 3, 6).requires_grad_()
    loss, stats = sdpo_distill_loss(s, torch.randn(2, 3, 6), torch.zeros(2, 3), topk=2, alpha=1.0)
    loss.backward()
    assert loss.item() == 0.0 and stats["sd/divergence"] == 0.0
    assert float(s.grad.abs().sum()) == 0.0


def test_reduction_is_sequence_mean_over_all_rows():
    # identical per-token divergence d everywhere: rows 0 and 1 have trained tokens, row 2 has none -> 2d/3
    s = torch.tensor([[[2.0, 0.0, -1.0]]]).expand(3, 4, 3).contiguous()
    t = torch.tensor([[[0.0, 1.0, 0.5]]]).expand(3, 4, 3).contiguous()
    d = per_token_sdpo_divergence(s, t, topk=1, alpha=1.0)[0, 0].item()
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    loss, stats = sdpo_distill_loss(s, t, mask, topk=1, alpha=1.0)
    assert loss.item() == pytest.approx(2 * d / 3, rel=1e-6)
    assert stats["sd/divergence"] == pytest.approx(d, rel=1e-6)


def test_tail_mass_stats():
    s = _logits_of([0.5, 0.3, 0.2]).float()
    t = _logits_of([0.2, 0.5, 0.3]).float()
    _, stats = sdpo_distill_loss(s, t, torch.ones(1, 1), topk=1, alpha=0.5)
    assert stats["sd/tail_mass_student"] == pytest.approx(0.5, abs=1e-6)
    assert stats["sd/tail_mass_teacher"] == pytest.approx(0.8, abs=1e-6)


def test_is_weight_clips_and_scales():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    old = torch.tensor([[-1.0, -3.0, -0.4]])
    w = sdpo_is_weight(logp, old, 2.0)
    assert w.tolist()[0] == pytest.approx([1.0, 2.0, math.exp(-0.1)], abs=1e-6)
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(1, 3, 6, generator=g), torch.randn(1, 3, 6, generator=g)
    d = per_token_sdpo_divergence(s, t, topk=2, alpha=0.5)
    loss, _ = sdpo_distill_loss(s, t, torch.ones(1, 3), topk=2, alpha=0.5, is_weight=w)
    assert loss.item() == pytest.approx(float((d * w).mean()), rel=1e-6)


def test_result_is_a_named_tuple():
    result = sdpo_distill_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 4), torch.ones(1, 2), topk=2, alpha=0.5)
    assert isinstance(result, DistillLossResult) and set(result.stats) == {
        "sd/loss", "sd/divergence", "sd/tail_mass_student", "sd/tail_mass_teacher"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"topk": 0, "alpha": 0.5}, "topk must be"),
        ({"topk": 5, "alpha": 0.5}, "topk must be"),
        ({"topk": 2, "alpha": 1.5}, "alpha must be"),
        ({"topk": 2.0, "alpha": 0.5}, "topk must be"),
    ],
)
def test_bad_arguments_raise_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sdpo_distill_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 4), torch.ones(1, 2), **kwargs)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="teacher_logits"):
        sdpo_distill_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 5), torch.ones(1, 2), topk=2, alpha=0.5)
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        sdpo_distill_loss(torch.randn(2, 4), torch.randn(2, 4), torch.ones(1, 2), topk=2, alpha=0.5)
    with pytest.raises(ValueError, match="mask"):
        sdpo_distill_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 4), torch.ones(1, 3), topk=2, alpha=0.5)
    with pytest.raises(ValueError, match="only 0 and 1"):
        sdpo_distill_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 4), torch.full((1, 2), 0.5), topk=2, alpha=0.5)


# ------------------------------------------------------------------ equality with TRL


# Runs under bench/.venv-trl and imports nothing from this repository: TRL's per-token top-k loss, and the
# SDPOTrainer's own reduction + importance-weight code called on a stand-in trainer object.
TRL_SCRIPT = textwrap.dedent(
    """
    import sys, types
    from collections import defaultdict
    import torch
    import trl
    from trl.experimental.sdpo import loss_utils
    from trl.experimental.sdpo.sdpo_trainer import DistillationLogits, SDPOTrainer

    cases = torch.load(sys.argv[1])
    out = []
    for c in cases:
        args = types.SimpleNamespace(distillation_mode="topk_logits", distillation_topk=c["topk"],
                                     distillation_alpha=c["alpha"], distillation_add_tail=True,
                                     distillation_is_clip=c["is_clip"])
        trainer = types.SimpleNamespace(args=args, _name="SDPO", _metrics={"train": defaultdict(list)},
                                        accelerator=types.SimpleNamespace(gather=lambda x: x))
        trainer._log_self_distillation_metric = types.MethodType(SDPOTrainer._log_self_distillation_metric, trainer)
        student = c["student"].clone().requires_grad_()
        per_token = loss_utils.compute_topk_self_distillation_loss(
            student, c["teacher"], distillation_topk=c["topk"], distillation_alpha=c["alpha"],
            distillation_add_tail=True)
        logits = DistillationLogits(completion_ids=c["ids"], completion_mask=c["mask"], loss_mask=c["mask"],
                                    student_logits=student, teacher_logits=c["teacher"])
        inputs = {} if c["old_logp"] is None else {"old_per_token_logps": c["old_logp"]}
        loss = SDPOTrainer._compute_self_distillation_loss(trainer, types.SimpleNamespace(training=True), inputs,
                                                           logits)
        loss.backward()
        out.append({"per_token": per_token.detach(), "loss": loss.detach(), "grad": student.grad,
                    "logged": trainer._metrics["train"]["self_distillation/distillation_loss"][-1]})
    torch.save({"trl": trl.__version__, "results": out}, sys.argv[2])
    """
)


def _load_trl_env():
    spec = importlib.util.spec_from_file_location("amrsd_bench_trl_env", REPO / "bench" / "trl_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _registry_reachable() -> bool:
    probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "trl"], capture_output=True,
                           text=True, timeout=300)
    return probe.returncode == 0


def _trl_python() -> Path:
    trl_env = _load_trl_env()
    venv = trl_env.DEFAULT_TRL_VENV
    if not (venv / "bin" / "python").exists() and not _registry_reachable():
        pytest.skip(f"pip cannot reach the package registry to build {venv}")
    return trl_env.ensure_trl_venv(venv)


def _cases():
    g = torch.Generator().manual_seed(2601)
    b, t, v = 3, 6, 64
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    cases = []
    for alpha in ALPHAS:
        for topk, is_clip in ((8, None), (8, 2.0), (1, None), (v, None)):
            student = torch.randn(b, t, v, generator=g) * 3
            teacher = student + torch.randn(b, t, v, generator=g) * 1.5
            ids = torch.randint(0, v, (b, t), generator=g)
            old_logp = None
            if is_clip is not None:
                logp = torch.log_softmax(student, -1).gather(-1, ids[..., None])[..., 0]
                old_logp = logp + torch.randn(b, t, generator=g)
            cases.append({"alpha": alpha, "topk": topk, "is_clip": is_clip, "student": student, "teacher": teacher,
                          "ids": ids, "mask": mask, "old_logp": old_logp})
    return cases


def _ours(case):
    student = case["student"].clone().requires_grad_()
    is_weight = None
    if case["is_clip"] is not None:
        logp = torch.log_softmax(student, -1).gather(-1, case["ids"][..., None])[..., 0]
        is_weight = sdpo_is_weight(logp, case["old_logp"], case["is_clip"])
    per_token = per_token_sdpo_divergence(student, case["teacher"], topk=case["topk"], alpha=case["alpha"])
    loss, stats = sdpo_distill_loss(student, case["teacher"], case["mask"], topk=case["topk"], alpha=case["alpha"],
                                    is_weight=is_weight)
    loss.backward()
    return per_token.detach(), loss.detach(), student.grad, stats["sd/divergence"]


@pytest.mark.slow
def test_equals_trl_sdpo_loss(tmp_path):
    python = _trl_python()
    cases = _cases()
    torch.save(cases, tmp_path / "cases.pt")
    (tmp_path / "trl_sdpo.py").write_text(TRL_SCRIPT)
    env = {k: val for k, val in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([str(python), str(tmp_path / "trl_sdpo.py"), str(tmp_path / "cases.pt"),
                          str(tmp_path / "trl.pt")], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('trl'))"],
                             capture_output=True, text=True).stdout.strip()
    assert run.returncode == 0, f"TRL side failed (trl {version}; needs trl.experimental.sdpo):\n{run.stderr[-3000:]}"
    trl_out = torch.load(tmp_path / "trl.pt")
    worst = {"per_token": 0.0, "loss": 0.0, "grad": 0.0, "logged": 0.0}
    for case, theirs in zip(cases, trl_out["results"], strict=True):
        per_token, loss, grad, logged = _ours(case)
        worst["per_token"] = max(worst["per_token"], float((per_token - theirs["per_token"]).abs().max()))
        worst["loss"] = max(worst["loss"], abs(float(loss - theirs["loss"])))
        worst["grad"] = max(worst["grad"], float((grad - theirs["grad"]).abs().max()))
        worst["logged"] = max(worst["logged"], abs(logged - theirs["logged"]))
    print(f"trl {trl_out['trl']}: max |ours - TRL| over {len(cases)} cases: {json.dumps(worst)}")
    assert max(worst.values()) < 1e-5, f"trl {trl_out['trl']}: max |ours - TRL| = {worst}"
