"""SmolLM2-135M-Instruct on BFCL simple and multiple (``AMRSD-BFCL-v0``): greedy answers, per-category accuracy.

Every task of the chosen families (both splits by default: BFCL's full categories, 400 simple and 200 multiple) is
reset in ``AMRSD-BFCL-v0``; the first observation and ``info["tools"]`` are rendered with the model's own chat
template (the Hermes tool block, as the trainer renders them), generated greedily (temperature 0) by vLLM's CPU
build in one batch, and the reply is sent to ``env.step``: its reward (``bfcl_ast``) is the verdict. Prints accuracy
per category and writes the responses as JSON lines (``model``, ``task_id``, ``family``, ``text``, ``correct``), which
``bench/bfcl_agreement.py --responses`` judges with BFCL's own checker too.

    .venv/bin/python bench/bfcl_smollm2.py --limit 100 --out tests/data/bfcl_smollm2_responses.jsonl   # as recorded
    .venv/bin/python bench/bfcl_smollm2.py                   # all 400 simple and 200 multiple tasks

The recorded run (100 random tasks per family, 2-core AMD EPYC shared with other work) took 30 minutes, nearly all
of it generation; ``docs/BENCHMARKS.md`` ("BFCL checker agreement") has the figures.

Generation runs in vLLM's venv (``bench/vllm_env.py``; this script re-executes its ``--generate`` step there, on
prompts it rendered here); everything else runs in the project's venv, which holds the BFCL data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate(prompts_path: Path, out_path: Path, model: str, max_tokens: int, threads: int) -> None:
    """(vLLM's venv) Greedy completions of the rendered prompts in ``prompts_path``, one JSON string a line."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from vllm import LLM, SamplingParams

    prompts = [json.loads(line) for line in prompts_path.read_text(encoding="utf-8").splitlines()]
    llm = LLM(model=model, tokenizer=model, dtype="float32", seed=0, max_model_len=8192, enforce_eager=True,
              enable_prefix_caching=True, gpu_memory_utilization=0.05)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0)
    outs = llm.generate(prompts, params)
    with out_path.open("w", encoding="utf-8") as fh:
        for out in outs:
            fh.write(json.dumps({"text": out.outputs[0].text, "tokens": len(out.outputs[0].token_ids),
                                 "finish": out.outputs[0].finish_reason}) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model folder, or a name resolve_model knows")
    p.add_argument("--families", nargs="*", default=["bfcl.simple", "bfcl.multiple"])
    p.add_argument("--split", default="all", choices=["all", "train", "test"],
                   help="all: BFCL's full categories (default); train/test: the env's split")
    p.add_argument("--limit", type=int, default=None, help="a random subset of this many tasks per family (seed 0)")
    p.add_argument("--max-tokens", type=int, default=192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the responses here (JSON lines)")
    p.add_argument("--generate", nargs=2, type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.generate is not None:
        generate(*args.generate, model=args.model, max_tokens=args.max_tokens, threads=args.threads)
        return 0

    import gymnasium as gym
    from transformers import AutoTokenizer

    import amrsd_envs  # noqa: F401  (registers the ids)
    from amrsd_envs.catalog import load_env_tasks
    from amrsd_train.models import resolve_model

    started = time.perf_counter()
    folder = Path(args.model) if Path(args.model).is_dir() else resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    catalog = load_env_tasks(["AMRSD-BFCL-v0"], families=args.families)
    env = gym.make("AMRSD-BFCL-v0", tasks=catalog)
    task_ids: list[str] = []
    for family_id in args.families:
        family = catalog[family_id]
        indices = range(len(family)) if args.split == "all" else family.indices(args.split)
        ids = [family.instance(i).id for i in indices]
        if args.limit is not None and args.limit < len(ids):
            ids = sorted(random.Random(0).sample(ids, args.limit), key=ids.index)
        task_ids += ids
    prompts = []
    for task_id in task_ids:
        messages, info = env.reset(options={"task_id": task_id})
        prompts.append(tokenizer.apply_chat_template(messages, tools=info["tools"] or None,
                                                     add_generation_prompt=True, tokenize=False))

    sys.path.insert(0, str(REPO / "bench"))
    from vllm_env import ensure_vllm_venv

    python = ensure_vllm_venv()
    with tempfile.TemporaryDirectory() as tmp:
        prompts_path, outs_path = Path(tmp) / "prompts.jsonl", Path(tmp) / "outs.jsonl"
        prompts_path.write_text("".join(json.dumps(x) + "\n" for x in prompts), encoding="utf-8")
        gen_started = time.perf_counter()
        env_vars = {**os.environ, "PYTHONPATH": str(REPO),
                    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
        subprocess.run([str(python), __file__, "--model", str(folder), "--max-tokens", str(args.max_tokens),
                        "--threads", str(args.threads), "--generate", str(prompts_path), str(outs_path)],
                       env=env_vars, check=True)
        gen_s = time.perf_counter() - gen_started
        outs = [json.loads(line) for line in outs_path.read_text(encoding="utf-8").splitlines()]

    rows = []
    for task_id, out in zip(task_ids, outs, strict=True):
        env.reset(options={"task_id": task_id})
        _, reward, terminated, _, info = env.step(out["text"])
        assert terminated
        rows.append({"task_id": task_id, "family": task_id.split("/", 1)[0], "text": out["text"],
                     "correct": reward == 1.0, "tokens": out["tokens"], "finish": out["finish"]})
    env.close()
    wall = time.perf_counter() - started

    print(f"\n{folder.name} on AMRSD-BFCL-v0, greedy, max_tokens {args.max_tokens}, split {args.split}"
          f"{f', {args.limit} random tasks per family' if args.limit else ''}; {platform.machine()} "
          f"{os.cpu_count()} cpus; generation {gen_s:.0f} s, total {wall:.0f} s")
    print("| category | tasks | correct | accuracy | replies with a call | hit max_tokens |")
    print("|---|---:|---:|---:|---:|---:|")
    for family_id in args.families:
        group = [r for r in rows if r["family"] == family_id]
        good = sum(r["correct"] for r in group)
        calls = sum("<tool_call>" in r["text"] for r in group)
        cut = sum(r["finish"] == "length" for r in group)
        print(f"| {family_id} | {len(group)} | {good} | {good / len(group):.2%} | {calls} | {cut} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", encoding="utf-8") as fh:
            for r in rows:
                row = {"model": folder.name, **{k: r[k] for k in ("task_id", "family", "text", "correct")}}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"responses written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
