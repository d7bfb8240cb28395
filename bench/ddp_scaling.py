"""One process against two (torchrun, DDP over gloo) on the same training run: step time by phase.

Both runs are ``amrsd_train.run`` on the same config, seed and global batch (``--tasks`` x ``--group`` episodes of
``--family`` per step, GRPO), so they train the same weights (``tests/test_distributed.py`` checks that); only the
split of the work differs. The one-process run uses ``--threads`` torch threads; each of the two ranks uses
``--threads // 2``, so both use the same cores. The table gives the mean of each ``time/*`` phase of
``metrics.jsonl`` over the steps after the first (the first pays for warm-up) and the ratio one/two processes.

Usage (from the repository root)::

    .venv/bin/python bench/ddp_scaling.py                        # tiny model SFT'd on the family (bench/.cache)
    .venv/bin/python bench/ddp_scaling.py --steps 4 --tasks 8 --group 8

Prints; asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.train_step import TINY_BENCH_MODEL, bench_model, machine_lines  # noqa: E402

PHASES = ("generate", "verify", "score", "update", "step")


def write_config(args: argparse.Namespace, model_dir: Path, out: Path, threads: int) -> Path:
    """The run's YAML config (everything named here, nothing from configs/)."""
    import yaml

    cfg = {"model": str(model_dir), "algorithm": "grpo", "families": [args.family], "tasks_per_step": args.tasks,
           "group_size": args.group, "mini_batches": 1, "ppo_epochs": 1, "micro_batch_size": args.micro_batch,
           "max_new_tokens": args.max_new_tokens, "total_steps": args.steps, "eval_every": 0, "eval_tasks": 2,
           "eval_k": 1, "checkpoint_every": 0, "threads": threads, "progress": False, "seed": args.seed,
           "output_dir": str(out), "resume": "never"}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def phase_means(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "time/step_s" in r][1:]  # the first step pays for warm-up
    return {p: statistics.fmean(r[f"time/{p}_s"] for r in steps) for p in PHASES}


def launch(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TINY_BENCH_MODEL)
    parser.add_argument("--family", default="tooluse.calc_arith")
    parser.add_argument("--tasks", type=int, default=8, help="tasks per step (a multiple of 2)")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="training steps per run (the first is not counted)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the one-process run (2 ranks: half)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.tasks % 2 or args.steps < 2 or args.threads < 2:
        raise SystemExit("--tasks must be even, --steps >= 2 and --threads >= 2")

    print("command: " + " ".join(shlex.quote(a) for a in sys.orig_argv))
    for line in machine_lines(args.threads, f"(this process; the runs: {args.threads} threads for one process, "
                                            f"{args.threads // 2} per rank for two)"):
        print(line)
    model_dir = bench_model(args.model, args.family, args.threads)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="amrsd-ddp-") as tmp:
        one, two = Path(tmp) / "one", Path(tmp) / "two"
        half = args.threads // 2
        wall_one = launch([py, "-m", "amrsd_train", "--config", str(write_config(args, model_dir, one,
                                                                                      args.threads))], args.threads)
        wall_two = launch([py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "amrsd_train", "--config", str(write_config(args, model_dir, two, half))], half)
        m1, m2 = phase_means(one), phase_means(two)
    print(f"\n{args.tasks} tasks x G={args.group} of {args.family} per step, {args.steps} steps "
          f"(mean of steps 2..{args.steps}); 1 process x {args.threads} threads vs 2 processes x {half}")
    print("| phase | 1 process (s) | 2 processes (s) | speedup |")
    print("|---|---:|---:|---:|")
    for p in PHASES:
        print(f"| {p} | {m1[p]:.2f} | {m2[p]:.2f} | {m1[p] / m2[p]:.2f}x |")
    print(f"wall incl. start-up and the two evals: {wall_one:.0f} s vs {wall_two:.0f} s; load average at end: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
