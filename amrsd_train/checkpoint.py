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
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    peers: Any,
    metrics_file: Path | None,
    keep: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``root/step_N`` atomically. ``extra`` holds more resumable state (e.g. the teacher's weights), saved
    beside the optimizer in ``trainer.pt`` and returned by :func:`load_trainer_state` under the same keys."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}"
    tmp.mkdir()
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "model")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
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
