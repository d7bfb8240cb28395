"""Rollout throughput: the ``hf`` engine against the ``vllm`` engine (CPU build) on the same model, tasks and seeds.

Both engines run the project's multi-turn rollout (``run_group_rollouts``: batched generation across all live
episodes, tools executed by the envs between turns, verification at the end) on ``--tasks`` x ``--group`` episodes
of ``--family``, interleaved round by round (hf, vllm, hf, vllm, ...) after one warm-up round each; the table gives
medians of episodes/s and generated tokens/s, and the ratio vllm / hf. Generation differs between the engines (other
kernels and RNG), so the episodes are not the same token for token; the tokens/s column accounts for that.

Runs in vLLM's venv (bench/vllm_env.py, created on first use); started from another python it re-executes itself
there. Usage (from the repository root)::

    .venv/bin/python bench/rollout_throughput.py --model .cache/models/tiny-<key>   # a warm-started tiny model
    .venv/bin/python bench/rollout_throughput.py --model tiny --tasks 8 --group 8 --rounds 3

Prints; asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _in_vllm_venv() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="model folder, or an embedded name resolved by resolve_model")
    p.add_argument("--family", default="tooluse.calc_arith")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    if not _in_vllm_venv():
        sys.path.insert(0, str(REPO / "bench"))
        from vllm_env import ensure_vllm_venv

        python = ensure_vllm_venv()
        env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
        return subprocess.run([str(python), __file__, *(argv if argv is not None else sys.argv[1:])], env=env).returncode

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import gymnasium as gym
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import amrsd_envs  # noqa: F401
    from amrsd_envs.catalog import load_env_tasks
    from amrsd_train.engines import SamplingParams, make_engine
    from amrsd_train.models import resolve_model
    from amrsd_train.rollout import run_group_rollouts
    from amrsd_train.trainer import STOP_STRINGS

    torch.set_num_threads(args.threads)
    folder = Path(args.model) if Path(args.model).is_dir() else resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    catalog = load_env_tasks(["AMRSD-ToolUse-v0"], families=[args.family])
    fam = catalog[args.family]
    task_ids = [fam.instance(i).id for i in fam.indices("train")][: args.tasks]
    envs = [gym.make("AMRSD-All-v0", tasks=catalog) for _ in range(args.tasks * args.group)]
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, stop_strings=STOP_STRINGS)
    t0 = time.perf_counter()
    engines = {"hf": make_engine("hf", model=model, tokenizer=tok)}
    t_hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    engines["vllm"] = make_engine("vllm", model=model, tokenizer=tok, gpu_memory_utilization=0.05, max_model_len=2048)
    t_vllm = time.perf_counter() - t0
    load = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {load[0]:.1f}; model {folder.name}; "
          f"{args.family}, {args.tasks} tasks x G={args.group}, max_new_tokens {args.max_new_tokens}, "
          f"{args.threads} threads; engine start: hf {t_hf:.1f} s, vllm {t_vllm:.1f} s")

    results: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for name, engine in engines.items():
            t0 = time.perf_counter()
            trajs, stats = run_group_rollouts(engine, envs, task_ids, args.group, params, max_total_tokens=1024,
                                              seed=1000 * rnd, reset_options={"record_peer": False})
            dt = time.perf_counter() - t0
            tokens = sum(t.response_length for t in trajs)
            if rnd:
                results[name].append((len(trajs) / dt, tokens / dt))
            print(f"  round {rnd} {name:5} {dt:6.2f} s  {len(trajs) / dt:6.2f} episodes/s  {tokens / dt:8.1f} tok/s "
                  f"pass {sum(t.correct for t in trajs)}/{len(trajs)}")
    med = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for name, rs in results.items()}
    print(f"\n{'engine':8} {'episodes/s':>11} {'gen tok/s':>10}")
    for name, (eps, tps) in med.items():
        print(f"{name:8} {eps:11.2f} {tps:10.1f}")
    print(f"vllm / hf: {med['vllm'][0] / med['hf'][0]:.2f}x episodes/s, {med['vllm'][1] / med['hf'][1]:.2f}x tokens/s")
    for env in envs:
        env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
