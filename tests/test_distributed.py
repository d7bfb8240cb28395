"""torchrun: two gloo processes on CPU train what one process trains on the same global batch and seed.

The end-to-end test launches ``python -m torch.distributed.run --nproc_per_node 2 -m amrsd_train``; the update
test runs ``ppo_update`` in a two-process gloo group on two halves of a batch against one process on the whole batch,
with more than one mini-batch and epoch (so the global shuffle, the global token count and the zero-weight padding
micro-batches are all exercised).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from amrsd_train import distributed
from amrsd_train.checkpoint import list_checkpoints
from amrsd_train.config import TrainConfig

TASKS = str(Path(__file__).parent / "data" / "tasks")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, model: Path, name: str, **kw) -> TrainConfig:
    data = dict(
        model=str(model), tasks_dir=TASKS, envs=["AMRSD-ToolUse-v0"], families=["test.calc"], algorithm="grpo",
        group_size=4, tasks_per_step=2, mini_batches=1, ppo_epochs=1, micro_batch_size=4, lr=1e-3, temperature=1.5,
        max_new_tokens=32, max_total_tokens=256, total_steps=2, eval_every=0, eval_tasks=2, checkpoint_every=0,
        output_dir=str(tmp_path / name), progress=False, seed=0, threads=1,
    )
    data.update(kw)
    return TrainConfig.validated(data)


def _rows(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r for r in rows}


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(checkpoint / "model" / "model.safetensors")


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(tiny_calc, tmp_path):
    from amrsd_train import run

    cfg = _config(tmp_path, tiny_calc, "ddp")
    (tmp_path / "ddp.yaml").write_text(cfg.to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(_free_port()), "-m", "amrsd_train", "--config",
                          str(tmp_path / "ddp.yaml")], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("held-out test split") == 1, "rank 1 must not report"
    # the one-process run goes on to step 3, checkpointing step 2 on the way (the lr schedule is constant)
    one = run(_config(tmp_path, tiny_calc, "one", total_steps=3, checkpoint_every=2, keep_checkpoints=2))

    ddp_dir = Path(cfg.output_dir)
    a, b = _rows(one.output_dir), _rows(ddp_dir)
    assert sorted(a) == [0, 1, 2, 3] and sorted(b) == [0, 1, 2]
    # the same episodes: rollouts are seeded by global episode index, whichever rank runs them
    for step in (1, 2):
        for key in ("train/reward_mean", "train/pass_rate", "train/batch_tokens", "train/response_length",
                    "train/groups_with_signal"):
            assert b[step][key] == pytest.approx(a[step][key], abs=1e-9), (step, key)
        # the gradient is the global batch's (DDP's mean undone, token-mean over the global token count)
        assert b[step]["actor/grad_norm"] == pytest.approx(a[step]["actor/grad_norm"], rel=1e-5), step
    assert max(a[s]["train/groups_with_signal"] for s in (1, 2)) > 0, "no gradient: the equality would be vacuous"

    # AdamW moves every weight by about lr per step whatever its gradient's size, so weights whose gradient is near
    # float noise (summed in another order by two processes) may differ by a small fraction of lr: tolerance lr / 10
    # (measured: at most 2e-5, while training moved the weights by 2e-3)
    w1, w2 = _weights(one.output_dir / "checkpoints" / "step_000002"), _weights(ddp_dir / "checkpoints" / "step_000002")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-4, rtol=0, msg=k)

    # one checkpoint, written by rank 0, and it resumes in one process into the one-process run's step 3
    assert [c.name for c in list_checkpoints(ddp_dir / "checkpoints")] == ["step_000002"]
    assert not list((ddp_dir / "checkpoints").glob(".tmp-*"))
    run(_config(tmp_path, tiny_calc, "ddp", total_steps=3, resume_allow_changes=["total_steps"]))
    b = _rows(ddp_dir)
    assert sorted(b) == [0, 1, 2, 3]
    for key in ("train/reward_mean", "train/batch_tokens", "train/response_length"):
        assert b[3][key] == pytest.approx(a[3][key], abs=1e-9), key


def test_a_world_size_that_does_not_divide_tasks_per_step_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = TrainConfig.validated({"tasks_per_step": 3, "group_size": 2})
    with pytest.raises(ValueError, match=r"tasks_per_step = 3 is not divisible by the world size 2"):
        distributed.setup(cfg)


def test_without_torchrun_everything_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.setup(TrainConfig.validated({}))
    assert not torch.distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.shard(["a", "b", "c"]) == (["a", "b", "c"], 0)
    assert distributed.reduce_metrics({"x": 1.0}) == {"x": 1.0}
    assert distributed.on_rank0(lambda: 7) == 7


# -- ppo_update in a two-process gloo group ----------------------------------------------------------------------

SHUFFLE_SEED = 18  # its shuffles split the global mini-batches 3/1, 1/3, 4/0 and 0/4 between the two ranks
UPDATE_CFG = SimpleNamespace(ppo_epochs=2, mini_batches=2, micro_batch_size=2, clip_low=0.2, clip_high=0.2,
                             dual_clip=None, loss_agg="token-mean", kl_coef=0.0, kl_kind="k3", max_grad_norm=1.0)


def _update_inputs(folder: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    g = torch.Generator().manual_seed(4)
    lengths = [30, 6, 22, 11, 17, 4, 28, 9]
    B, T = len(lengths), max(lengths)
    ids = torch.randint(5, model.config.vocab_size, (B, T), generator=g)
    attn = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        attn[i, :n] = 1
    mask = ((torch.rand(B, T - 1, generator=g) < 0.6) & (attn[:, 1:] > 0)).float()
    batch = {"input_ids": ids, "attention_mask": attn, "loss_mask": mask, "lengths": attn.sum(1)}
    adv = torch.randn(B, generator=g)[:, None] * mask
    return model, batch, adv


def _update(model, batch, adv, scorer_of):
    from amrsd_train.update import TokenScorer, ppo_update, score_batch

    batch = dict(batch)
    batch["old_logp"] = score_batch(TokenScorer(model), batch, 3)  # the ratio moves off 1 in the second epoch
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # SGD: see test_update (Adam blows float noise up)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    ppo_update(UPDATE_CFG, scorer_of(TokenScorer(model)), opt, sched, batch, adv, None,
               torch.Generator().manual_seed(SHUFFLE_SEED))


def _rank_worker(rank: int, folder: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    model, batch, adv = _update_inputs(folder)
    half = slice(rank * 4, rank * 4 + 4)
    local = {k: v[half] for k, v in batch.items()}
    _update(model, local, adv[half], lambda s: distributed.wrap_for_update(s, "ddp"))
    if rank == 0:
        torch.save(model.state_dict(), out)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_update_on_two_halves_equals_one_process_on_the_batch(tmp_path):
    """Two mini-batches, two epochs: the global mini-batches split unevenly between the ranks (one holds no row of
    one of them and runs only zero-weight micro-batches), the ratio moves off 1; the weights still equal one
    process's update of the whole batch."""
    import torch.multiprocessing as mp

    from amrsd_train.models import build_tiny_model

    folder = str(build_tiny_model(tmp_path / "tiny", ["a b c d e f g 1 2 3"] * 5, seed=0, num_hidden_layers=2))
    gen = torch.Generator().manual_seed(SHUFFLE_SEED)
    shares = [int((mb < 4).sum()) for _ in range(2) for mb in torch.randperm(8, generator=gen).view(2, 4)]
    assert 0 in shares and 3 in shares, shares  # the padding path runs
    model, batch, adv = _update_inputs(folder)
    start = copy.deepcopy(model.state_dict())
    _update(model, batch, adv, lambda s: s)
    mp.spawn(_rank_worker, args=(folder, _free_port(), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt")
    one = model.state_dict()
    assert any(not torch.equal(one[k], start[k]) for k in one)
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], atol=2e-6, rtol=1e-4, msg=k)
