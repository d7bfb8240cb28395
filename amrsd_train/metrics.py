"""Metrics: one JSON line per step (and TensorBoard when installed), and the end-of-run plot."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends ``{"step": k, ...}`` lines to ``metrics.jsonl``. On resume, lines after the checkpoint's step are
    dropped first so the file never holds two histories."""

    def __init__(self, out_dir: Path, *, resume_step: int | None = None, tensorboard: bool = False):
        self.path = out_dir / "metrics.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= resume_step]
            self.path.write_text("".join(k + "\n" for k in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ValueError("tensorboard=true needs the tensorboard package: pip install 'amrsd[tensorboard]'") from exc
            self._tb = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, step)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


CREDIT_SERIES = {
    "reflect/accept_rate": ("hint accept rate", "#31a354"),
    "reflect/leak_rate": ("hint leak rate (per sample)", "#de2d26"),
    "amrsd/gate_frac": ("gate open (token fraction)", "#756bb1"),
    "amrsd/beta": ("beta (annealed)", "#636363"),
}
"""AMR-SD's per-step diagnostics drawn in the middle panel when a run logged them."""


def _plot_credit(ax, train: list[dict[str, Any]], keys: list[str]) -> None:
    for key in keys:
        label, color = CREDIT_SERIES[key]
        pts = [r for r in train if key in r]
        ax.plot([r["step"] for r in pts], [r[key] for r in pts], lw=1.6, color=color, label=label,
                ls="--" if key == "amrsd/beta" else "-")
    ax.set_ylabel("AMR-SD")
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, ncol=2)


def plot_run(rows: list[dict[str, Any]], out: Path, title: str) -> Path:
    """Train reward (and its moving average) and eval pass@1 against step, with the phase timings beneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "train/reward_mean" in r]
    evals = [r for r in rows if "eval/pass@1" in r]
    credit_keys = [k for k in CREDIT_SERIES if any(k in r for r in train)]
    if credit_keys:
        fig, (ax, ax3, ax2) = plt.subplots(3, 1, figsize=(8, 8.5), height_ratios=[3, 1.4, 1.3], sharex=True)
        _plot_credit(ax3, train, credit_keys)
    else:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6.5), height_ratios=[3, 1.3], sharex=True)
    if train:
        xs = [r["step"] for r in train]
        ys = [r["train/reward_mean"] for r in train]
        ax.plot(xs, ys, color="#9ecae1", lw=1, label="train reward (batch mean)")
        w = max(1, len(ys) // 10)
        ma = [sum(ys[max(0, i - w + 1): i + 1]) / len(ys[max(0, i - w + 1): i + 1]) for i in range(len(ys))]
        ax.plot(xs, ma, color="#3182bd", lw=2, label=f"train reward ({w}-step mean)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval/pass@1"] for r in evals], "o-", color="#e6550d", lw=2,
                label="eval pass@1 (held-out)")
        k_keys = sorted({k for r in evals for k in r if re.fullmatch(r"eval/pass@\d+", k) and k != "eval/pass@1"})
        for key in k_keys:
            pts = [r for r in evals if key in r]
            ax.plot([r["step"] for r in pts], [r[key] for r in pts], "s--", color="#fd8d3c", lw=1.5,
                    label=f"eval {key.split('/')[1]} (held-out)")
        # per-family pass@1 (logged when a run trains on several families); a legend of more than a few is noise
        family_keys = sorted({k for r in evals for k in r if k.startswith("eval/pass@1/")})
        if len(family_keys) <= 6:
            for key, color in zip(family_keys, ["#31a354", "#756bb1", "#636363", "#e7298a", "#66a61e", "#a6761d"]):
                pts = [r for r in evals if key in r]
                ax.plot([r["step"] for r in pts], [r[key] for r in pts], ".:", color=color, lw=1.2,
                        label=f"  pass@1 {key.split('/', 2)[2]}")
        for r in (evals[0], evals[-1]):
            ax.annotate(f"{r['eval/pass@1']:.2f}", (r["step"], r["eval/pass@1"]), textcoords="offset points",
                        xytext=(0, 8), ha="center", color="#e6550d")
    values = [v for r in rows for k, v in r.items() if k in ("train/reward_mean",) or k.startswith("eval/pass@")]
    top = min(1.05, max(0.2, 1.25 * max(values, default=0.0)))  # zoom in: small models live near the bottom
    ax.set_ylim(-0.01, top)
    ax.set_ylabel("reward / pass@1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    phases = [k for k in ("time/generate_s", "time/verify_s", "time/reflect_s", "time/teacher_score_s", "time/score_s",
                          "time/update_s") if train and k in train[0]]
    bottom = [0.0] * len(train)
    for k, color in zip(phases, ["#fdae6b", "#a1d99b", "#fa9fb5", "#c994c7", "#bcbddc", "#9ecae1"]):
        vals = [r.get(k, 0.0) for r in train]
        ax2.bar([r["step"] for r in train], vals, bottom=bottom, color=color, label=k.split("/")[1][:-2], width=0.9)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_ylabel("seconds / step")
    ax2.set_xlabel("step")
    if phases:
        ax2.legend(loc="upper right", ncol=4, fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
