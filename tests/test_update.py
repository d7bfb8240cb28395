"""The update's pieces (amrsd_train/update.py) against the straightforward computation they replace.

TokenScorer runs the LM head only at the scored positions; ppo_update trims each length-bucketed micro-batch to its
longest row. Both must give what a full ``[B, T, V]`` log-softmax over full-width micro-batches in shuffled order
gives: the same log-probs, entropies and gradients, and after an update the same parameters, to float tolerance.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from amrsd_train.losses import entropy_from_logits, policy_loss
from amrsd_train.models import build_tiny_model
from amrsd_train.update import TokenScorer, micro_batch_rows, ppo_update, score_batch


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(Path(__import__("tempfile").mkdtemp()) / "tiny", ["a b c d e f g 1 2 3"] * 5, seed=0,
                              num_hidden_layers=2)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def _batch(vocab: int, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    attn = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        attn[i, :n] = 1
        ids[i, n:] = 0
    # trained tokens: a random subset of each row's real next-token positions (a response after a prompt)
    mask = ((torch.rand(B, T - 1, generator=g) < 0.6) & (attn[:, 1:] > 0)).float()
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask, "old_logp": torch.zeros(B, T - 1),
            "lengths": attn.sum(1)}


def _full(model, ids, attn):
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1), logits


def test_scorer_equals_full_log_softmax_at_targets_and_zero_elsewhere(model):
    b = _batch(model.config.vocab_size, [17, 9, 30, 4])
    targets = b["loss_mask"] > 0
    scorer = TokenScorer(model, logits_budget=7 * model.config.vocab_size)  # several chunks
    assert scorer._plain_head
    logp, ent, _ = scorer(b["input_ids"], b["attention_mask"], targets, with_entropy=True)
    ref, logits = _full(model, b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(logp[targets], ref[targets], atol=1e-5, rtol=1e-5)
    assert bool((logp[~targets] == 0).all()) and bool((ent[~targets] == 0).all())
    torch.testing.assert_close(ent[targets], entropy_from_logits(logits)[targets], atol=1e-5, rtol=1e-5)


def test_scorer_gradients_equal_the_full_path(model):
    b = _batch(model.config.vocab_size, [12, 20, 6], seed=1)
    targets = b["loss_mask"] > 0
    w = torch.randn(targets.shape, generator=torch.Generator().manual_seed(3))
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    (TokenScorer(m1)(b["input_ids"], b["attention_mask"], targets) * w * targets).sum().backward()
    (_full(m2, b["input_ids"], b["attention_mask"])[0] * w * targets).sum().backward()
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_micro_batches_partition_the_rows_longest_first():
    lengths = torch.tensor([5, 40, 12, 40, 7, 33, 1])
    rows = torch.tensor([6, 2, 0, 3, 1, 5])
    mbs = micro_batch_rows(lengths, rows, 4)
    assert [len(m) for m in mbs] == [4, 2]
    flat = torch.cat(mbs)
    assert sorted(flat.tolist()) == sorted(rows.tolist())
    assert lengths[flat].tolist() == sorted(lengths[rows].tolist(), reverse=True)
    assert flat[:2].tolist() == [3, 1]  # equal lengths keep the mini-batch's (shuffled) order


def test_score_batch_equals_one_full_forward(model):
    b = _batch(model.config.vocab_size, [25, 3, 14, 9, 30], seed=2)
    got = score_batch(TokenScorer(model), b, micro_batch_size=2)
    ref, _ = _full(model, b["input_ids"], b["attention_mask"])
    targets = b["loss_mask"] > 0
    torch.testing.assert_close(got[targets], ref[targets], atol=1e-5, rtol=1e-5)
    assert bool((got[~targets] == 0).all())


def _naive_update(cfg, model, optimizer, batch, token_adv, gen):
    """The update without bucketing, trimming or selective scoring: full-width micro-batches in shuffled order."""
    B = token_adv.shape[0]
    mb_size = B // cfg.mini_batches
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=gen)
        for m in range(cfg.mini_batches):
            mb = order[m * mb_size:(m + 1) * mb_size]
            optimizer.zero_grad(set_to_none=True)
            mb_tokens = batch["loss_mask"][mb].sum().clamp(min=1)
            for c in range(0, len(mb), cfg.micro_batch_size):
                rows = mb[c:c + cfg.micro_batch_size]
                logp, _ = _full(model, batch["input_ids"][rows], batch["attention_mask"][rows])
                mask = batch["loss_mask"][rows]
                loss, _ = policy_loss(logp, batch["old_logp"][rows], token_adv[rows], mask, clip_low=0.2,
                                      clip_high=0.2, dual_clip=None, agg="token-mean")
                (loss * mask.sum() / mb_tokens).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()


def test_ppo_update_equals_the_naive_update(model):
    b = _batch(model.config.vocab_size, [30, 6, 22, 11, 17, 4, 28, 9], seed=4)
    cfg = SimpleNamespace(ppo_epochs=2, mini_batches=2, micro_batch_size=2, clip_low=0.2, clip_high=0.2,
                          dual_clip=None, loss_agg="token-mean", kl_coef=0.0, kl_kind="k3", max_grad_norm=1.0)
    adv = torch.randn(8, generator=torch.Generator().manual_seed(5))[:, None] * b["loss_mask"]
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    b["old_logp"] = score_batch(TokenScorer(m1), b, 3)  # the ratio moves off 1 in the second epoch
    # SGD, not AdamW: Adam's normalisation blows float noise in near-zero gradients (k_proj's bias) up to lr-sized steps
    opt1 = torch.optim.SGD(m1.parameters(), lr=0.5)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt1, lambda k: 1.0)
    stats = ppo_update(cfg, TokenScorer(m1), opt1, sched, b, adv, None, torch.Generator().manual_seed(9))
    _naive_update(cfg, m2, opt2, b, adv, torch.Generator().manual_seed(9))
    assert {"actor/loss", "actor/entropy", "actor/grad_norm"} <= set(stats)
    moved = 0
    for (name, p1), p0, p2 in zip(m1.named_parameters(), model.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, atol=2e-6, rtol=1e-4, msg=name)
        moved += int(not torch.equal(p1, p0))
    assert moved > 0
