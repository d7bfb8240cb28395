"""Checkpoints that lose nothing: model, optimizer, scheduler, RNG states, step, peers, metrics.

A checkpoint is written into ``<dir>/.tmp-step_NNNNNN``, completed with a ``COMPLETE`` marker, fsynced, then
renamed to ``<dir>/step_NNNNNN`` in one ``os.rename``. A process killed mid-write leaves only a ``.tmp-`` folder,
which is never loaded (and is removed on the next save).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MARKER = "COMPLETE"


@dataclass
class TrainState:
    """What a run needs besides tensors to continue exactly."""

    step: int  # the next step to run
    config: dict[str, Any]
    best: dict[str, float]

    def to_json(self) -> str:
        return json.dumps({"step": self.step, "config": self.config, "best": self.best}, indent=2)


# Fields that change where and how a run reports, never what it computes: resuming with them changed still gives
# the uninterrupted run. (Evaluation draws from its own seeded generator and records no peers.)
RESUME_SAFE_FIELDS = frozenset({
    "output_dir", "resume", "resume_allow_changes", "progress", "tensorboard", "checkpoint_every",
    "keep_checkpoints", "inspect_groups", "eval_every", "eval_tasks", "eval_k", "eval_temperature",
})


def config_changes(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Every dotted field whose value differs between two dumped configs: ``{"amrsd.beta_max": (1.0, 2.0)}``."""
    changes: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(saved) | set(new)):
        a, b = saved.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            changes.update(config_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            changes[f"{prefix}{key}"] = (a, b)
    return changes


def check_resume_config(checkpoint: Path, new: dict[str, Any]) -> None:
    """Refuse to resume when the config changed in a field that breaks exact resume; name every such field.

    Reads only the checkpoint's ``state.json``, so a refused resume costs nothing (checked before the model loads).
    """
    saved = json.loads((checkpoint / "state.json").read_text())["config"]
    allowed = set(new.get("resume_allow_changes") or [])
    breaking = {k: v for k, v in config_changes(saved, new).items()
                if k.split(".")[0] not in RESUME_SAFE_FIELDS and k not in allowed and k.split(".")[0] not in allowed}
    if breaking:
        lines = "\n".join(f"  {k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in breaking.items())
        raise ValueError(
            f"cannot resume from {checkpoint}: the config changed in fields that break exact resume:\n{lines}\n"
            f"Restore them, start a fresh run (resume=never or another output_dir), or accept the change with "
            f"resume_allow_changes=[{', '.join(breaking)}]."
        )


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: Path,
    *,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer | dict[str, Any],
    scheduler: Any,
    state: TrainState,
    peers: Any,
    metrics_file: Path | None,
    keep: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``root/step_N`` atomically. ``optimizer`` is the optimizer or its state dict (under FSDP the state
    gathered from the ranks' shards; under DDP every rank holds the same state, so one copy serves any world size).
    ``extra`` holds more resumable state (e.g. the teacher's weights), saved
    beside the optimizer in ``trainer.pt`` and returned by :func:`load_trainer_state` under the same keys."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}"
    tmp.mkdir()
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "model")
    optim_state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict(), "rng": rng_state(),
                **(extra or {})}, tmp / "trainer.pt")
    (tmp / "state.json").write_text(state.to_json())
    if peers is not None:
        peers.save(tmp / "peers.sqlite")
    if metrics_file is not None and metrics_file.exists():
        shutil.copy2(metrics_file, tmp / "metrics.jsonl")
    (tmp / MARKER).write_text("ok\n")
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.exists():
        return []
    done = [p for p in root.glob("step_*") if (p / MARKER).exists()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def load_trainer_state(path: Path) -> tuple[TrainState, dict[str, Any]]:
    if not (path / MARKER).exists():
        raise ValueError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    data = json.loads((path / "state.json").read_text())
    blobs = torch.load(path / "trainer.pt", weights_only=False)
    return TrainState(step=data["step"], config=data["config"], best=data.get("best", {})), blobs


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
