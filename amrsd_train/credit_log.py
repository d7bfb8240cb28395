"""What a run keeps of each step's token credit for ``amrsd-train inspect``: a few groups, token by token.

``RUN_DIR/inspect/step_NNNNNN.json`` holds, for ``inspect_groups`` task groups of the step (those with a learning
signal first), the diagnosis the policy reflected on, the hint or why it was rejected, and every token of every
rollout with its kind (prompt / assistant / tool), assistant turn, ``A_hat``, CIG and gate. The page itself is
rendered by :mod:`amrsd_train.inspect_page`, which also validates this schema.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from amrsd_train.algorithms import Credit, VerifiedBatch


def pick_groups(batch: VerifiedBatch, n: int) -> list[list[int]]:
    """The first ``n`` groups that carry a learning signal (A != 0), topped up with the others."""
    groups = batch.groups()
    signal = [g for g in groups if bool((batch.adv[g] != 0).any())]
    rest = [g for g in groups if g not in signal]
    return (signal + rest)[:n]


def _hint_fields(hint: Any) -> dict[str, Any]:
    if hint is None:
        return {"diagnosis": None, "hint": None, "hint_samples": []}
    if isinstance(hint, str):  # raw privileged context (raw_sd, rlsd, the no-reflection ablation)
        return {"diagnosis": None, "hint": hint, "hint_samples": []}
    return {
        "diagnosis": hint.prompt,
        "hint": hint.hint,
        "hint_samples": [{"text": t, "ok": v.ok, "reason": v.reason} for t, v in zip(hint.samples, hint.verdicts)],
    }


def _tokens(tokenizer: Any, batch: VerifiedBatch, credit: Credit, row: int) -> list[list[Any]]:
    traj = batch.trajs[row]
    cig, gate = credit.token_info.get("cig"), credit.token_info.get("gate")
    out = []
    for p, tok in enumerate(traj.input_ids):
        text = tokenizer.decode([tok], skip_special_tokens=False)
        if p < traj.prompt_len:
            out.append([text, "prompt", -1, None, None, None])
        elif traj.loss_mask[p]:
            col = p - 1  # column p-1 predicts token p
            out.append([text, "assistant", traj.turn_ids[p], round(float(credit.token_adv[row, col]), 5),
                        None if cig is None else round(float(cig[row, col]), 4),
                        None if gate is None else round(float(gate[row, col]), 4)])
        else:
            out.append([text, "tool", -1, None, None, None])
    return out


def inspect_record(step: int, cfg: Any, tokenizer: Any, batch: VerifiedBatch, credit: Credit, n_groups: int
                   ) -> dict[str, Any]:
    groups = []
    for rows in pick_groups(batch, n_groups):
        first = batch.trajs[rows[0]]
        prompt = next((m["content"] for m in first.opening if m["role"] == "user"), "")
        rollouts = []
        for r in rows:
            t, v = batch.trajs[r], batch.trajs[r].verification
            rollouts.append({
                "reward": t.reward, "correct": t.correct, "adv": round(float(batch.adv[r]), 5),
                "extracted": v.extracted if v is not None else None,
                "feedback": v.feedback if v is not None else "no final answer (turn or token limit)",
                "tokens": _tokens(tokenizer, batch, credit, r),
            })
        groups.append({"task_id": first.task_id, "prompt": prompt, **_hint_fields(credit.hints.get(rows[0])),
                       "rollouts": rollouts})
    return {"step": step, "algorithm": cfg.algorithm, "beta": credit.metrics.get("amrsd/beta"), "groups": groups}


def write_inspect_record(folder: Path, step: int, cfg: Any, tokenizer: Any, batch: VerifiedBatch, credit: Credit,
                         n_groups: int) -> Path:
    """Write ``folder/step_NNNNNN.json`` atomically (a killed run leaves no half-written record)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:06d}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(inspect_record(step, cfg, tokenizer, batch, credit, n_groups)))
    os.replace(tmp, path)
    return path
