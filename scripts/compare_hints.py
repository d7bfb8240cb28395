"""Hints of two policies on the same diagnoses: the warm-started tiny model and SmolLM2-135M-Instruct (zero-shot).

Rolls out G episodes of a few held-out tasks with the tiny model (the attempts reflection diagnoses), builds each
group's diagnosis as the trainer does, and lets both models write a hint for it through the same Reflector (same
prompt template, leak filter and one resample). Prints, per group, the attempts' outcomes and both hints with the
filter's verdicts. Prints; asserts nothing.

    AMRSD_CACHE=.cache .venv/bin/python scripts/compare_hints.py --tiny .cache/models/tiny-<key> --tasks 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", required=True, help="folder of the warm-started tiny model")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--families", default="tooluse.calc_arith,tooluse.calc_chain")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import gymnasium as gym
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import amrsd_envs  # noqa: F401
    from amrsd_envs.catalog import load_env_tasks
    from amrsd_train import models, reflection
    from amrsd_train.algorithms import attempt_of
    from amrsd_train.config import ReflectionConfig
    from amrsd_train.engines import make_engine
    from amrsd_train.engines.base import SamplingParams
    from amrsd_train.rollout import run_group_rollouts

    torch.set_num_threads(args.threads)
    families = args.families.split(",")
    catalog = load_env_tasks(["AMRSD-ToolUse-v0"], families=families)
    envs = [gym.make("AMRSD-All-v0", tasks=catalog) for _ in range(args.tasks * args.group)]
    task_ids = envs[0].unwrapped.task_ids("test", args.tasks)

    def engine_of(folder: Path):
        tok = AutoTokenizer.from_pretrained(folder)
        return make_engine("hf", model=AutoModelForCausalLM.from_pretrained(folder), tokenizer=tok), tok

    tiny, tiny_tok = engine_of(Path(args.tiny))
    trajs, _ = run_group_rollouts(tiny, envs, task_ids, args.group,
                                  SamplingParams(temperature=1.0, max_new_tokens=64, stop_strings=("</tool_call>",)),
                                  max_total_tokens=512, seed=0, reset_options={"record_peer": False})
    jobs = []
    for g in range(args.tasks):
        group = trajs[g * args.group:(g + 1) * args.group]
        task = catalog.get(group[0].task_id)
        jobs.append((reflection.diagnose(task, [attempt_of(t) for t in group], catalog=catalog), None))
    cfg = ReflectionConfig(hint_max_tokens=96)
    smol, smol_tok = engine_of(models.resolve_model("smollm2-135m"))
    results = {name: reflection.Reflector(engine, tok, cfg).reflect(jobs, seed=1)
               for name, (engine, tok) in {"tiny": (tiny, tiny_tok), "smollm2-135m": (smol, smol_tok)}.items()}
    for k, (diag, _) in enumerate(jobs):
        outcomes = ", ".join("ok" if a.correct else (a.answer or "none") for a in diag.attempts)
        print(f"\n### {diag.task_id}: {diag.task_prompt}\nattempts: {outcomes}")
        for name, res in results.items():
            r = res[k]
            print(f"- {name}: " + (f"hint: {r.hint!r}" if r.hint is not None else "no hint"))
            for text, verdict in zip(r.samples, r.verdicts):
                print(f"    sample ({verdict.reason}): {' '.join(text.split())[:240]!r}")
    for name, res in results.items():
        print(f"\n{name}: accepted {sum(r.hint is not None for r in res)} of {len(res)} groups, "
              f"{sum(len(r.samples) for r in res)} samples")


if __name__ == "__main__":
    main()
