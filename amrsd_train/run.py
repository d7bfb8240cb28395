"""``amrsd_train.run(config)`` and the ``amrsd-train`` command line.

    amrsd-train --config configs/tiny-grpo.yaml [key=value ...]    train (resumes from output_dir by default)
    torchrun --nproc_per_node N -m amrsd_train --config CFG      the same, data-parallel over N processes
    amrsd-train sft [--config configs/tiny-amrsd.yaml] [--ship] [key=value ...]  build + warm-start the tiny model
    amrsd-train config-docs                                          print the config reference (markdown)
    amrsd-train compare --config CFG --steps N [--seeds 3 ...]     every algorithm x seed -> docs/RESULTS.md + plot
    amrsd-train inspect RUN_DIR [--step N] [--out FILE]            one step's tokens, A_hat, CIG, hints as an HTML page
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from amrsd_train.config import SFTConfig, TrainConfig, apply_overrides, config_reference_markdown, validated


def load_config(config: TrainConfig | dict[str, Any] | str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """A TrainConfig from a TrainConfig, a dict or a YAML path, with ``key=value`` overrides applied."""
    if isinstance(config, TrainConfig):
        return config.with_overrides(list(overrides)) if overrides else config
    if isinstance(config, dict):
        return TrainConfig.validated(apply_overrides(config, list(overrides)), source="dict")
    if isinstance(config, (str, Path)):
        return TrainConfig.from_yaml(config, list(overrides))
    raise TypeError(f"config must be a TrainConfig, a dict or a YAML path, got {type(config).__name__}")


def run(config: TrainConfig | dict[str, Any] | str | Path, overrides: Sequence[str] = ()):
    """Train. Validates the whole config before loading anything; returns a :class:`~amrsd_train.trainer.TrainResult`."""
    cfg = load_config(config, overrides)
    from amrsd_train.trainer import train

    return train(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "config-docs":
        print(config_reference_markdown())
        return 0
    if not (argv and argv[0] == "inspect") and (missing := _missing_train_extra()):
        print(
            f"amrsd-train: the trainer needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            'not installed; install the trainer with: pip install "amrsd[train]"',
            file=sys.stderr,
        )
        return 2
    if argv and argv[0] == "sft":
        return _sft_main(argv[1:])
    if argv and argv[0] == "inspect":
        from amrsd_train.inspect_page import main as inspect_main

        return inspect_main(argv[1:])
    if argv and argv[0] == "compare":
        from amrsd_train.compare import main as compare_main

        return compare_main(argv[1:])
    parser = argparse.ArgumentParser(prog="amrsd-train", description="Train an agent with GRPO on the AMR-SD envs.")
    parser.add_argument("--config", required=True, help="YAML training config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. total_steps=10 lr=3e-5")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as exc:
        print(f"amrsd-train: {exc}", file=sys.stderr)
        return 2
    from amrsd_train.distributed import launched_rank
    from amrsd_train.trainer import train

    result = train(cfg)
    if launched_rank() != 0:
        return 0  # under torchrun rank 0 reports
    print("\n" + eval_table(result, cfg))
    print(f"metrics: {result.output_dir / 'metrics.jsonl'}\nplot:    {result.plot}\ncheckpoint: {result.checkpoint}")
    return 0


def _missing_train_extra() -> list[str]:
    """The modules of the ``train`` extra (``pip install "amrsd[train]"``) that cannot be imported here."""
    import importlib.util

    return [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]


def eval_table(result, cfg: TrainConfig) -> str:
    """Held-out metrics before training (step 0) and at the end, one line per metric."""
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines() if line]
    evals = [r for r in rows if "eval/pass@1" in r]
    if not evals:
        return "no evaluation was run"
    first, last = evals[0], evals[-1]
    how = "greedy" if cfg.eval_temperature == 0 else f"{cfg.eval_k} samples each at T={cfg.eval_temperature}"
    lines = [f"held-out test split, {cfg.eval_tasks} tasks, {how}:",
             f"  {'':34s} {'step ' + str(first['step']):>9s} {'step ' + str(last['step']):>9s}"]
    for key in (k for k in last if k.startswith("eval/")):
        lines.append(f"  {key[5:]:34s} {first.get(key, float('nan')):9.3f} {last[key]:9.3f}")
    return "\n".join(lines + training_diagnostics(rows) + phase_times(rows))


DIAGNOSTICS = ("train/pass_rate", "reflect/accept_rate", "reflect/leak_rate", "reflect/hint_tokens",
               "amrsd/gate_frac", "amrsd/cig_mean_pos", "amrsd/cig_mean_neg", "amrsd/beta", "sd/divergence",
               "rlsd/weight_mean", "actor/entropy")
"""Training-time statistics shown at the start and end of a run (those the run logged)."""


def training_diagnostics(rows: list[dict[str, Any]], window: int = 5) -> list[str]:
    """Mean of each logged diagnostic over the first and the last ``window`` training steps."""
    steps = [r for r in rows if "train/reward_mean" in r]
    keys = [k for k in DIAGNOSTICS if any(k in r for r in steps)]
    if not steps or not keys:
        return []
    head, tail = steps[:window], steps[-window:]

    def mean(part: list[dict[str, Any]], key: str) -> float:
        vals = [r[key] for r in part if key in r]
        return sum(vals) / len(vals) if vals else float("nan")

    label = f"steps {head[0]['step']}-{head[-1]['step']}", f"steps {tail[0]['step']}-{tail[-1]['step']}"
    out = ["", f"training diagnostics (mean over {len(head)} steps):", f"  {'':34s} {label[0]:>11s} {label[1]:>11s}"]
    out += [f"  {k:34s} {mean(head, k):11.3f} {mean(tail, k):11.3f}" for k in keys]
    return out


def phase_times(rows: list[dict[str, Any]]) -> list[str]:
    """Wall time spent in each phase over the whole run (seconds and share)."""
    keys = ["time/load_model_s", "time/generate_s", "time/verify_s", "time/reflect_s", "time/teacher_score_s",
            "time/credit_s", "time/score_s", "time/update_s", "time/eval_s"]
    totals = {k: sum(r.get(k, 0.0) for r in rows) for k in keys}
    # step_s covers generate .. update (credit includes reflect and teacher scoring); eval and loading are outside it
    whole = sum(r.get("time/step_s", 0.0) for r in rows) + totals["time/load_model_s"] + totals["time/eval_s"]
    if whole <= 0:
        return []
    names = {"time/load_model_s": "load model (+ warm start)", "time/credit_s": "credit (all of it)",
             "time/reflect_s": "  of which reflect (hints)", "time/teacher_score_s": "  of which teacher scoring",
             "time/score_s": "old/ref log-probs"}
    out = ["", f"time per phase (total {whole / 60:.1f} min):"]
    out += [f"  {names.get(k, k[5:-2]):34s} {totals[k]:9.1f} s {100 * totals[k] / whole:5.1f}%"
            for k in keys if totals[k] > 0]
    return out


def _sft_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amrsd-train sft", description="Build and warm-start a model by SFT.")
    parser.add_argument("--config", default=None, help="YAML: an SFT config, or a training config (its warm_start)")
    parser.add_argument("--tasks", default=None, help="tasks directory (default: built-in)")
    parser.add_argument("--ship", action="store_true",
                        help="build into the cache folder the trainer looks in (or take the one there), then copy it "
                        "into the package (amrsd_train/warm_starts/) so fresh machines skip the build")
    parser.add_argument("--note", default=None, help="with --ship: a provenance note kept in shipped.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the SFT config")
    args = parser.parse_args(argv)
    if args.ship and args.tasks:
        parser.error("--ship is for the built-in tasks only (a shipped warm start is keyed on them); drop --tasks")
    data: dict[str, Any] = {}
    if args.config:
        data = yaml.safe_load(Path(args.config).read_text()) or {}
        if "warm_start" in data or set(data) & set(TrainConfig.model_fields) - set(SFTConfig.model_fields):
            data = data.get("warm_start", {})
    try:
        cfg = validated(SFTConfig, apply_overrides(data, args.overrides, schema=SFTConfig), args.config or "overrides")
    except ValueError as exc:
        print(f"amrsd-train sft: {exc}", file=sys.stderr)
        return 2
    from amrsd_train import models
    from amrsd_train.sft import ship_warm_start, warm_start, warm_start_folder

    if not args.ship:
        print(f"saved {warm_start(cfg, tasks_dir=args.tasks)}")
        return 0
    cached, seconds = warm_start_folder(cfg), None
    if not models.is_model_dir(cached):
        t0 = time.perf_counter()
        warm_start(cfg.model_copy(update={"output": str(cached)}))
        seconds = time.perf_counter() - t0
    print(f"shipped {ship_warm_start(cfg, cached, seconds, note=args.note)} (from {cached})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
