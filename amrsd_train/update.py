"""The policy update: collate trajectories, score their tokens, and run PPO epochs over length-bucketed micro-batches.

These are the pieces ``trainer.train`` calls in its steps 4 and 5, public so that benchmarks and other loops drive the
same code (``bench/train_step.py`` times exactly these functions against TRL).

Token scoring (:class:`TokenScorer`) is the one implementation of ``log p(ids[t + 1] | ids[<= t])`` used by the
trainer (old, reference and current log-probs), the HF engine's ``score`` and the SFT warm start. It runs the model's
backbone once and applies the LM head only at the positions asked for, packed across rows, in chunks of a bounded
number of logits: a batch never materialises ``[B, T, V]`` logits unless a loss term needs the full distribution
(``raw_sd``'s distillation), and the vocabulary projection, which dominates a small model's compute, is paid only on
trained tokens rather than on the prompt, tool results and padding as well.

Micro-batches (:func:`micro_batch_rows`) are formed inside each shuffled mini-batch after sorting its rows by length,
and each is cut to its own longest row, so a micro-batch of short episodes does not pay for the longest episode of
the whole batch. Gradient accumulation is a sum, so the order of micro-batches does not change the update (up to
float rounding).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from amrsd_train import distributed
from amrsd_train.losses import kl_penalty, policy_loss

__all__ = ["LOGITS_BUDGET", "TokenScorer", "collate", "micro_batch_rows", "ppo_update", "score_batch"]

LOGITS_BUDGET = 2**22
"""Most logits (positions x vocabulary) one chunk of the LM head produces: 4M floats = 16 MB in float32."""

# Models whose output logits are not a plain linear map of the last hidden state: they are scored through the full
# forward (still only at the positions asked for afterwards).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def collate(trajs: list[Any], device: str) -> dict[str, Tensor]:
    """Right-padded ``[B, T]`` tensors of the trajectories (masks 0 on padding).

    Column ``t`` of every ``[B, T-1]`` entry (``loss_mask``, ``old_logp``, ``turn_ids``, ``answer_mask``) refers to
    predicting ``input_ids[:, t + 1]`` from ``input_ids[:, <= t]``; token 0 is never a target. ``lengths`` [B] holds
    each row's real length."""
    T = max(len(t.input_ids) for t in trajs)
    B = len(trajs)
    ids = torch.zeros(B, T, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.float32)
    old = torch.zeros(B, T, dtype=torch.float32)
    turns = torch.full((B, T), -1, dtype=torch.long)
    answer = torch.zeros(B, T, dtype=torch.float32)
    for i, t in enumerate(trajs):
        n = len(t.input_ids)
        ids[i, :n] = torch.tensor(t.input_ids)
        attn[i, :n] = 1
        mask[i, :n] = torch.tensor(t.loss_mask, dtype=torch.float32)
        old[i, :n] = torch.tensor(t.old_logprobs, dtype=torch.float32)
        turns[i, :n] = torch.tensor(t.turn_ids)
        answer[i, :n] = torch.tensor(t.answer_mask, dtype=torch.float32)
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device), "loss_mask": mask[:, 1:].to(device),
            "old_logp": old[:, 1:].to(device), "turn_ids": turns[:, 1:], "answer_mask": answer[:, 1:],
            "lengths": attn.sum(1)}


class TokenScorer(nn.Module):
    """``forward(input_ids, attention_mask, targets)`` -> log-probs ``[B, T-1]`` of the next tokens at ``targets``.

    Wraps a Hugging Face causal LM. ``targets`` (``[B, T-1]`` bool) selects the positions to score; the others are
    0.0. The backbone runs once; the LM head runs on the selected hidden states only, ``logits_budget`` logits at a
    time. With ``with_entropy`` it also returns the entropy of each selected position's distribution (0 elsewhere),
    and with ``full_logits`` the ``[B, T-1, V]`` float32 logits (for loss terms that need the whole distribution).

    It is an ``nn.Module`` so that ``DistributedDataParallel`` can wrap it: the forward that DDP sees is the one that
    produces the gradients it has to reduce."""

    def __init__(self, model: nn.Module, logits_budget: int = LOGITS_BUDGET):
        super().__init__()
        self.model = model
        self.logits_budget = logits_budget
        config = getattr(model, "config", None)
        self._plain_head = (
            model.get_output_embeddings() is not None
            and getattr(model, "base_model_prefix", "") != ""
            and hasattr(model, getattr(model, "base_model_prefix", ""))
            and not any(getattr(config, k, None) not in (None, 1.0) for k in _LOGIT_TRANSFORMS)
        )

    def forward(self, input_ids: Tensor, attention_mask: Tensor, targets: Tensor | None = None, *,
                with_entropy: bool = False, full_logits: bool = False):
        if targets is None:
            targets = attention_mask[:, 1:] > 0
        targets = targets.bool()
        next_ids = input_ids[:, 1:]
        logits_all = None
        if full_logits or not self._plain_head:
            logits_all = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
            picked = logits_all[targets]
        else:
            backbone = getattr(self.model, self.model.base_model_prefix)
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            picked = hidden[:, :-1][targets]  # [N, H]: only the positions that are scored
        logp_sel, ent_sel = self._score_rows(picked, next_ids[targets], logits_all is None, with_entropy)
        logp = torch.zeros(targets.shape, dtype=logp_sel.dtype, device=logp_sel.device).masked_scatter(targets, logp_sel)
        if not (with_entropy or full_logits):
            return logp
        entropy = None
        if with_entropy:
            entropy = torch.zeros(targets.shape, device=logp.device).masked_scatter(targets, ent_sel)
        return logp, entropy, (logits_all.float() if full_logits else None)

    def _score_rows(self, picked: Tensor, next_ids: Tensor, hidden: bool, with_entropy: bool):
        """Log-prob of ``next_ids`` (and entropy) for each row of ``picked``: hidden states (``hidden``) or logits."""
        head = self.model.get_output_embeddings() if hidden else None
        vocab = head.out_features if hidden else picked.shape[-1]
        chunk = max(1, self.logits_budget // max(1, vocab))
        logps, ents = [], []
        for c in range(0, picked.shape[0], chunk):
            z = (head(picked[c:c + chunk]) if hidden else picked[c:c + chunk]).float()
            lse = torch.logsumexp(z, dim=-1)
            # gather minus logsumexp: never a second [N, V] tensor of log-probabilities
            logps.append(z.gather(-1, next_ids[c:c + chunk, None]).squeeze(-1) - lse)
            if with_entropy:
                with torch.no_grad():
                    p = torch.softmax(z, dim=-1)
                    ents.append(lse - (p * torch.where(p > 0, z, torch.zeros(()))).sum(-1))
        empty = picked.new_zeros(0, dtype=torch.float32)
        return (torch.cat(logps) if logps else empty), (torch.cat(ents) if ents else empty)


def score_batch(scorer: nn.Module, batch: dict[str, Tensor], micro_batch_size: int, *,
                targets: Tensor | None = None) -> Tensor:
    """No-grad log-probs ``[B, T-1]`` of the whole batch at ``targets`` (default: the loss mask), scored in
    length-sorted chunks of ``micro_batch_size`` rows each cut to its longest row."""
    targets = batch["loss_mask"] > 0 if targets is None else targets
    B, width = targets.shape
    out = torch.zeros(B, width, dtype=torch.float32, device=targets.device)
    rows_all = torch.arange(B)
    with torch.no_grad():
        for rows in micro_batch_rows(batch["lengths"], rows_all, micro_batch_size):
            L = int(batch["lengths"][rows].max())
            out[rows, :L - 1] = scorer(batch["input_ids"][rows, :L], batch["attention_mask"][rows, :L],
                                       targets[rows, :L - 1]).float()
    return out


def micro_batch_rows(lengths: Tensor, rows: Tensor, micro_batch_size: int) -> list[Tensor]:
    """``rows`` split into micro-batches of ``micro_batch_size``, longest rows first (ties keep ``rows``' order)."""
    order = sorted(range(len(rows)), key=lambda k: -int(lengths[rows[k]]))
    ordered = rows[torch.tensor(order, dtype=torch.long)] if len(order) else rows
    return [ordered[c:c + micro_batch_size] for c in range(0, len(ordered), micro_batch_size)]


def ppo_update(cfg: Any, scorer: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, batch: dict[str, Tensor],
               token_adv: Tensor, ref_logp: Tensor | None, generator: torch.Generator, *,
               aux_loss: Callable[[Tensor, Tensor], tuple[Tensor, dict[str, float]]] | None = None,
               params: list[nn.Parameter] | None = None) -> dict[str, float]:
    """``cfg.ppo_epochs`` passes over the batch in ``cfg.mini_batches`` shuffled mini-batches, one optimizer step each;
    gradients accumulate over length-bucketed micro-batches of ``cfg.micro_batch_size`` rows, weighted so that the
    accumulated gradient equals the mini-batch's loss. Returns the mean of each logged statistic.

    ``scorer`` is a :class:`TokenScorer` (or a DDP wrapper of one); ``token_adv`` is the algorithm's ``[B, T-1]``
    credit; ``generator`` fixes the mini-batch shuffle; ``aux_loss(logits, rows)`` adds a term on full logits.

    Under torchrun the batch is this rank's shard: rows ``[rank * B, (rank + 1) * B)`` of a global batch of
    ``world * B`` rows (every rank holds ``B``). The shuffle permutes the global batch, each rank trains its rows of
    each global mini-batch, the token-mean weights divide by the global mini-batch's token count, and the loss is
    scaled by the world size to undo DDP's mean: the optimizer steps on the gradient one process computes on the
    global batch, up to float rounding. Ranks whose share of a mini-batch is smaller run zero-weight micro-batches
    so that every rank reduces gradients the same number of times."""
    token_adv = token_adv.to(batch["loss_mask"].device)
    params = params if params is not None else [p for p in scorer.parameters() if p.requires_grad]
    rank, world = distributed.rank(), distributed.world_size()
    B = token_adv.shape[0]
    mb_size = B * world // cfg.mini_batches
    sums: dict[str, list[float]] = {}
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B * world, generator=generator)
        for m in range(cfg.mini_batches):
            mb_global = order[m * mb_size:(m + 1) * mb_size]
            mb = mb_global[(mb_global // B) == rank] - rank * B  # this rank's rows of the global mini-batch
            optimizer.zero_grad(set_to_none=True)
            mb_tokens = distributed.all_reduce_sum(batch["loss_mask"][mb].sum()).clamp(min=1)
            micro = micro_batch_rows(batch["lengths"], mb, cfg.micro_batch_size)
            n_micro = max(-(-int((mb_global // B == r).sum()) // cfg.micro_batch_size) for r in range(world))
            for i in range(n_micro):
                # a rank out of rows repeats row 0 at weight 0: its backward still joins the gradient reduction
                rows, live = (micro[i], 1.0) if i < len(micro) else (torch.zeros(1, dtype=torch.long), 0.0)
                # raw_sd's teacher logits come at the batch's full width; every other algorithm trims to the rows
                L = batch["input_ids"].shape[1] if aux_loss is not None else int(batch["lengths"][rows].max())
                mask = batch["loss_mask"][rows, :L - 1]
                with distributed.grad_sync(scorer, sync=i == n_micro - 1):
                    logp, ent, logits = scorer(batch["input_ids"][rows, :L], batch["attention_mask"][rows, :L],
                                               mask > 0, with_entropy=True, full_logits=aux_loss is not None)
                    old = batch["old_logp"][rows, :L - 1] if batch["old_logp"] is not None else logp.detach()
                    loss, stats = policy_loss(logp, old, token_adv[rows, :L - 1], mask,
                                              clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
                                              agg=cfg.loss_agg)
                    if aux_loss is not None:
                        aux, aux_stats = aux_loss(logits, rows)
                        loss = loss + aux
                        stats = {**stats, **aux_stats, "actor/aux_loss": aux.item()}
                    if ref_logp is not None:
                        kl_tok = kl_penalty(logp, ref_logp[rows, :L - 1], cfg.kl_kind)
                        kl = (kl_tok * mask).sum() / mask.sum().clamp(min=1)
                        loss = loss + cfg.kl_coef * kl
                        stats = {**stats, "actor/kl_ref": kl.item()}
                    # weight micro-batches so the accumulated gradient equals the (global) mini-batch's
                    weight = (mask.sum() / mb_tokens) if cfg.loss_agg == "token-mean" else len(rows) / mb_size
                    (loss * (weight * world * live)).backward()
                if not live:
                    continue
                stats = {**stats, "actor/entropy": ((ent * mask).sum() / mask.sum().clamp(min=1)).item(),
                         "actor/loss": loss.item()}
                for k, v in stats.items():
                    sums.setdefault(k, []).append(float(v))
            grad_norm = distributed.clip_grad_norm(scorer, params, cfg.max_grad_norm)
            sums.setdefault("actor/grad_norm", []).append(float(grad_norm))
            optimizer.step()
            scheduler.step()
    return {k: float(np.mean(v)) for k, v in sums.items()}
