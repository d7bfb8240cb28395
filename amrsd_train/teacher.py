"""The self-teacher: a frozen snapshot (or EMA) of the policy that scores trajectories under another context.

Self-distillation methods score the student's own sampled tokens under a *different opening* of the episode (the
task plus a hint, a reference, a counterfactual instruction): ``log pi_T(y_t | x', y_<t)``. The response part of a
trajectory (every id after its prompt: sampled turns, tool results, template glue) is kept token for token; only the
prompt ids are re-rendered from the new opening. Tool and user tokens are context, never scored targets: only the
positions of sampled ids are scored, and only those the engine is asked for (no ``[B, T, V]`` log-softmax).

Alignment convention (the trainer's): column ``t`` of a ``[B, T-1]`` tensor is the log-prob of ``input_ids[:, t+1]``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from amrsd_train.rollout import ChatTokens, Trajectory


@dataclass
class ContextSequences:
    """Trajectories re-rendered under new openings: for row ``i`` (``None`` where it has no new opening)."""

    ids: list[list[int] | None]
    masks: list[list[int] | None]
    shift: list[int]  # new prompt length minus old: position p of the trajectory is p + shift in the new sequence

    def rows(self) -> list[int]:
        return [i for i, ids in enumerate(self.ids) if ids is not None]


def context_sequences(chat: ChatTokens, trajs: list[Trajectory], openings: list[list[dict] | None]) -> ContextSequences:
    """Each trajectory's response ids after the prompt rendered from ``openings[i]`` (its tools kept)."""
    if len(openings) != len(trajs):
        raise ValueError(f"need one opening per trajectory ({len(trajs)}), got {len(openings)}")
    ids, masks, shift = [], [], []
    for traj, opening in zip(trajs, openings):
        if opening is None:
            ids.append(None), masks.append(None), shift.append(0)
            continue
        prompt = chat.prompt_ids(opening, traj.tools)
        ids.append(prompt + traj.input_ids[traj.prompt_len:])
        masks.append([0] * len(prompt) + traj.loss_mask[traj.prompt_len:])
        shift.append(len(prompt) - traj.prompt_len)
    return ContextSequences(ids, masks, shift)


def align_to_batch(per_row: dict[int, Tensor], seqs: ContextSequences, trajs: list[Trajectory], width: int) -> Tensor:
    """``[B, width]`` tensor in the trainer's convention from per-row vectors over the re-rendered sequences.

    ``per_row[i][q]`` refers to token ``q`` of ``seqs.ids[i]``; it lands in column ``q - shift - 1`` (the column that
    predicts the same sampled token of the original trajectory). Rows not in ``per_row`` are 0.
    """
    out = torch.zeros(len(trajs), width, dtype=torch.float32)
    for i, vec in per_row.items():
        p0 = trajs[i].prompt_len
        resp = vec[p0 + seqs.shift[i]:]  # the response part, original positions p0 ...
        out[i, p0 - 1: p0 - 1 + resp.numel()] = resp.float()
    return out


def context_logprobs(engine: Any, chat: ChatTokens, trajs: list[Trajectory], openings: list[list[dict] | None],
                     width: int) -> Tensor:
    """``[B, width]`` log-probs of each trajectory's sampled ids under its new opening (0 for rows without one)."""
    seqs = context_sequences(chat, trajs, openings)
    rows = seqs.rows()
    if not rows:
        return torch.zeros(len(trajs), width)
    scored = engine.score([seqs.ids[i] for i in rows], [seqs.masks[i] for i in rows])
    return align_to_batch(dict(zip(rows, scored)), seqs, trajs, width)


class Teacher:
    """A frozen copy of the policy, refreshed every ``sync_every`` steps, or an EMA of it (``ema`` in (0, 1)).

    ``engine`` scores with the teacher's weights (built by ``make_engine`` on the teacher module, so any engine kind
    that accepts a module works). The teacher never receives gradients.
    """

    def __init__(self, policy: nn.Module, make: Any, *, sync_every: int, ema: float | None = None):
        self.model = copy.deepcopy(policy).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.engine = make(self.model)
        self.sync_every, self.ema = sync_every, ema
        self.synced_at = 0

    @torch.no_grad()
    def refresh(self, policy: nn.Module, step: int) -> bool:
        """Bring the teacher up to date before step ``step``'s scoring; returns whether its weights changed."""
        if self.ema is not None:
            if step == 0:
                return False
            for t, p in zip(self.model.parameters(), policy.parameters()):
                t.mul_(self.ema).add_(p.detach(), alpha=1 - self.ema)
            return True
        if step - self.synced_at < self.sync_every:
            return False
        self.model.load_state_dict(policy.state_dict())
        self.synced_at = step
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "synced_at": self.synced_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.synced_at = int(state["synced_at"])

    @torch.no_grad()
    def logits(self, seqs: ContextSequences, rows: list[int], trajs: list[Trajectory], width: int,
               device: str | torch.device) -> Tensor:
        """``[len(rows), width, V]`` teacher logits aligned like :func:`align_to_batch` (zeros where not a response
        position or the row has no context). Used by logit-level distillation."""
        vocab = self.model.get_output_embeddings().weight.shape[0]
        out = torch.zeros(len(rows), width, vocab, device=device)
        have = [r for r in rows if seqs.ids[r] is not None]
        if not have:
            return out
        L = max(len(seqs.ids[r]) for r in have)
        ids = torch.zeros(len(have), L, dtype=torch.long)
        attn = torch.zeros(len(have), L, dtype=torch.long)
        for k, r in enumerate(have):
            ids[k, : len(seqs.ids[r])] = torch.tensor(seqs.ids[r])
            attn[k, : len(seqs.ids[r])] = 1
        logits = self.model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
        for k, r in enumerate(have):
            p0, s = trajs[r].prompt_len, seqs.shift[r]
            n = len(trajs[r].input_ids) - p0  # response positions p0 .. end, predicted from positions p0-1 ..
            # logits at position q predict token q+1: original column p-1 <- new position (p + s) - 1
            out[rows.index(r), p0 - 1: p0 - 1 + n] = logits[k, p0 + s - 1: p0 + s - 1 + n]
        return out
