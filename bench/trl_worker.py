"""TRL side of ``bench/train_step.py``: TRL's ``GRPOTrainer`` loss, backward and optimizer step on a given batch.

Runs under TRL's own virtualenv (``bench/.venv-trl``, made by ``train_step.py``), never under the project's, and
imports nothing from this repository. It loads the batch file written by ``train_step.py`` (token ids split into
prompt and completion, the project's loss mask, advantages, old log-probs, the micro-batch row order), builds a
real ``GRPOTrainer`` on the same model folder with a ``GRPOConfig`` matching the project's update (PPO-clip eps,
``beta=0``, ``num_iterations=1``, token-mean aggregation = TRL's ``dapo`` loss, AdamW, grad clip), and then answers
commands, one JSON object per line on stdin, with one line ``@@{json}`` on stdout each:

- ``{"cmd": "check"}``: TRL's loss on the first micro-batch (``compute_loss``, no step) and how far TRL's
  per-token log-probs are from the project's old log-probs on the trained tokens;
- ``{"cmd": "score"}``: seconds of TRL's old-log-prob pass over the whole batch
  (``_get_per_token_logps_and_entropies`` in chunks of ``per_device_train_batch_size``, as
  ``_generate_and_score_completions`` runs it when it needs old log-probs);
- ``{"cmd": "update"}``: seconds of one optimizer step the way ``Trainer``'s inner loop makes it:
  ``training_step`` (TRL's ``compute_loss`` + ``accelerator.backward``) per micro-batch, then
  ``_clip_grad_norm``, ``optimizer.step``, ``lr_scheduler.step``, ``model.zero_grad``;
- ``{"cmd": "quit"}``.

The one change to the trainer object: ``_prepare_inputs`` returns the given micro-batch as it is, because the batch
comes from the project's rollout instead of TRL's generation. Everything after that is TRL's code.

The multi-turn layout is TRL's own: ``completion_mask`` is 1 on every completion token (assistant turns, tool
results and template glue alike) and ``tool_mask`` is 0 on the tokens the policy did not sample, so the trained
tokens are exactly the project's ``loss_mask``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from importlib.metadata import version


def _reply(obj: dict) -> None:
    sys.stdout.write("@@" + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", required=True, help="JSON batch file written by bench/train_step.py")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    with open(args.batch) as fh:
        spec = json.load(fh)
    hp = spec["hyper"]
    rows = spec["rows"]
    micro = hp["micro_batch_size"]
    order: list[list[int]] = spec["micro_batches"]

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -- the generation batch as TRL lays it out: prompts left-padded, completions right-padded ------------------
    prompts = [r["input_ids"][: r["prompt_len"]] for r in rows]
    completions = [r["input_ids"][r["prompt_len"]:] for r in rows]
    P = max(len(p) for p in prompts)
    C = max(len(c) for c in completions)
    B = len(rows)
    prompt_ids = torch.full((B, P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(B, P, dtype=torch.long)
    completion_ids = torch.full((B, C), pad_id, dtype=torch.long)
    completion_mask = torch.zeros(B, C, dtype=torch.long)
    tool_mask = torch.ones(B, C, dtype=torch.long)  # TRL pads tool_mask with 1 (completion_mask is 0 there)
    old = torch.zeros(B, C, dtype=torch.float32)
    for i, r in enumerate(rows):
        p, c, n = prompts[i], completions[i], r["prompt_len"]
        prompt_ids[i, P - len(p):] = torch.tensor(p)
        prompt_mask[i, P - len(p):] = 1
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = 1
        tool_mask[i, : len(c)] = torch.tensor(r["loss_mask"][n:])
        old[i, : len(c)] = torch.tensor(r["old_logp"][n:])
    advantages = torch.tensor(spec["advantages"], dtype=torch.float32)
    loss_mask = completion_mask * tool_mask
    num_items_in_batch = loss_mask.sum()

    def micro_inputs(idx: list[int]) -> dict:
        sel = torch.tensor(idx)
        return {
            "prompt_ids": prompt_ids[sel], "prompt_mask": prompt_mask[sel],
            "completion_ids": completion_ids[sel], "completion_mask": completion_mask[sel],
            "tool_mask": tool_mask[sel], "advantages": advantages[sel],
            "old_per_token_logps": old[sel], "num_items_in_batch": num_items_in_batch,
        }

    batches = [micro_inputs(idx) for idx in order]

    # -- a real GRPOTrainer with the project's update settings ----------------------------------------------------
    out_dir = os.path.join(os.path.dirname(os.path.abspath(args.batch)), "trl-output")  # removed with the batch
    cfg = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=len(order),
        num_generations=hp["group_size"],
        num_iterations=1,
        beta=0.0,
        epsilon=hp["clip_low"],
        epsilon_high=hp["clip_high"],
        loss_type="dapo",  # sum over trained tokens / trained tokens of the whole accumulated batch = token-mean
        learning_rate=hp["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=hp["weight_decay"],
        adam_beta1=hp["adam_betas"][0],
        adam_beta2=hp["adam_betas"][1],
        max_grad_norm=hp["max_grad_norm"],
        optim="adamw_torch",  # the project's torch.optim.AdamW (foreach), not the fused variant
        max_completion_length=C,
        temperature=1.0,
        bf16=False,  # GRPOConfig defaults bf16 to True; the project trains float32 on CPU
        fp16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1_000_000,
        disable_tqdm=True,
        seed=0,
    )
    dataset = Dataset.from_dict({"prompt": ["(the batch is given)"] * B})

    def no_reward(completions, **kwargs):  # never called: there is no generation here
        return [0.0] * len(completions)

    trainer = GRPOTrainer(model=model, reward_funcs=no_reward, args=cfg, train_dataset=dataset,
                          processing_class=tokenizer)
    trainer._prepare_inputs = lambda inputs: inputs  # the batch comes from the project's rollout
    trainer.create_optimizer_and_scheduler(num_training_steps=1_000_000)
    trainer.model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.current_gradient_accumulation_steps = len(order)
    model = trainer.model
    _reply({"ready": True, "trl": version("trl"), "transformers": version("transformers"),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "padded_width": P + C, "prompt_width": P, "completion_width": C,
            "trained_tokens": int(num_items_in_batch)})

    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)["cmd"]
        if cmd == "quit":
            break
        if cmd == "check":
            first = batches[0]
            model.train()
            with torch.no_grad():
                loss = trainer.compute_loss(model, first)
                logps, _, _ = trainer._get_per_token_logps_and_entropies(
                    model, torch.cat([first["prompt_ids"], first["completion_ids"]], 1),
                    torch.cat([first["prompt_mask"], first["completion_mask"]], 1), C, batch_size=micro)
            m = (first["completion_mask"] * first["tool_mask"]).bool()
            diff = (logps - first["old_per_token_logps"])[m].abs()
            _reply({"loss": float(loss), "logp_max_abs_diff": float(diff.max()),
                    "logp_mean_abs_diff": float(diff.mean())})
        elif cmd == "score":
            ids = torch.cat([prompt_ids, completion_ids], 1)
            attn = torch.cat([prompt_mask, completion_mask], 1)
            t0 = time.perf_counter()
            with torch.no_grad():
                trainer._get_per_token_logps_and_entropies(model, ids, attn, C, batch_size=micro)
            _reply({"seconds": time.perf_counter() - t0})
        elif cmd == "update":
            t0 = time.perf_counter()
            losses = []
            for k, inputs in enumerate(batches):
                trainer.accelerator.gradient_state._set_sync_gradients(k == len(batches) - 1)
                losses.append(float(trainer.training_step(model, inputs, None)))
            grad_norm = trainer._clip_grad_norm(model)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            model.zero_grad()
            seconds = time.perf_counter() - t0
            _reply({"seconds": seconds, "loss_sum": sum(losses), "grad_norm": float(grad_norm)})
        else:
            _reply({"error": f"unknown command {cmd!r}; valid: check, score, update, quit"})


if __name__ == "__main__":
    main()
