"""One full training step of every algorithm on one GPU, with a SmolLM2-135M-shaped model of random weights.

Made for a machine with one NVIDIA GPU and PyTorch but no network (nothing is downloaded): the model is built here
(:func:`amrsd_train.models.build_tiny_model` with SmolLM2-135M's shape: 30 layers, hidden 576, 9 heads, 3 KV heads,
MLP 1536; the BPE tokenizer is trained on the task prompts, so the vocabulary, and so the LM head, is smaller than
SmolLM2's 49,152), then ``amrsd_train.run`` trains it for one step per algorithm (``grpo``, ``amrsd``, ``raw_sd``,
``rlsd``, ``gcpo``, ``entropy_realloc``) with the HF engine, bf16, on ``tooluse.calc_arith``. AMR-SD runs with the
task's reference as the teacher context (``reflection.source=raw``): random weights write no ``<hint>`` tag, and
the point here is that the teacher scoring, CIG and gate run on the GPU.

Per algorithm it prints the step's seconds split into generation / credit / update, tokens/s of the step (every
real token of the batch: prompts, tool results and sampled tokens) and peak GPU memory
(``torch.cuda.max_memory_allocated``). With ``--engine vllm`` too, where vLLM is installed.

    bash bench/gpu_check.sh                      # the wrapper: checks imports, then runs this
    python bench/gpu_check.py --device cpu --shape tiny --algorithms grpo   # a CPU smoke run (tests use it)

Asserts nothing about time; exits non-zero if a step fails.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES: dict[str, dict[str, object]] = {
    # SmolLM2-135M's config.json (LlamaConfig) in Qwen2Config fields; head_dim 64 as there
    "smollm2-135m": {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "intermediate_size": 1536, "max_position_embeddings": 2048,
                     "tie_word_embeddings": True, "rms_norm_eps": 1e-5},
    "tiny": {},  # amrsd_train.models.TINY_ARCH
}
ALGORITHMS = ("grpo", "amrsd", "raw_sd", "rlsd", "gcpo", "entropy_realloc")
FAMILY = "tooluse.calc_arith"


def build_model(shape: str, out: Path) -> Path:
    from amrsd_envs.catalog import load_env_tasks
    from amrsd_train.models import build_tiny_model

    catalog = load_env_tasks(["AMRSD-ToolUse-v0"])
    corpus = [fam.instance(i).prompt for fam in catalog for i in range(min(len(fam), 50))]
    return build_tiny_model(out, corpus, seed=0, vocab_size=8192, overwrite=True, **SHAPES[shape])


def step_config(model: Path, algorithm: str, args: argparse.Namespace, out: Path):
    from amrsd_train.config import TrainConfig

    extra: dict[str, object] = {}
    if algorithm == "amrsd":
        extra = {"reflection": {"source": "raw", "skip_solved_groups": False},
                 "amrsd": {"tau_pos": 0.0, "tau_neg": 0.0}}
    return TrainConfig(
        model=str(model), engine=args.engine, device=args.device, dtype=args.dtype, algorithm=algorithm,
        envs=["AMRSD-ToolUse-v0"], families=[FAMILY], tasks_per_step=args.tasks, group_size=args.group,
        micro_batch_size=args.micro_batch, max_new_tokens=args.max_new_tokens, max_total_tokens=1024,
        total_steps=1, eval_every=0, eval_tasks=1, checkpoint_every=0, output_dir=str(out / algorithm),
        resume="never", progress=False, seed=0, **extra,
    )


def peak_memory_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float:
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: the process's peak RSS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    p.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    p.add_argument("--engine", default="hf")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args(argv)

    import torch

    from amrsd_train import run

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible to torch; use --device cpu for a smoke run", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device {args.device} ({gpu}), torch {torch.__version__}, dtype {args.dtype}, shape {args.shape}, "
          f"engine {args.engine}, batch {args.tasks}x{args.group}, max_new_tokens {args.max_new_tokens}")
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="amrsd-gpu-check-"))
    t0 = time.perf_counter()
    model = build_model(args.shape, work / "model")
    print(f"built {args.shape}-shaped random model in {time.perf_counter() - t0:.1f} s: {model}")

    header = f"{'algorithm':16} {'step s':>7} {'gen s':>7} {'credit s':>8} {'update s':>8} {'tok/s':>8} {'peak GiB':>8}"
    print(header)
    failed = []
    for algorithm in args.algorithms.split(","):
        peak_memory_reset(args.device)
        cfg = step_config(model, algorithm, args, work / "runs")
        try:
            result = run(cfg)
        except Exception as exc:  # report every algorithm, then fail
            failed.append(algorithm)
            print(f"{algorithm:16} FAILED: {type(exc).__name__}: {exc}")
            continue
        m = result.final_metrics
        tokens = m["train/batch_tokens"]
        print(f"{algorithm:16} {m['time/step_s']:7.2f} {m['time/generate_s']:7.2f} {m['time/credit_s']:8.2f} "
              f"{m['time/update_s']:8.2f} {tokens / m['time/step_s']:8.0f} {peak_memory_gib(args.device):8.2f}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
