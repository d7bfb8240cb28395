"""torchrun support: one training process per rank, the step's task groups sharded across them.

``torchrun --nproc_per_node N -m amrsd_train --config CFG`` starts N copies of the trainer; :func:`setup` reads
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the
process group (gloo on CPU, NCCL on CUDA). Without those variables, or with ``WORLD_SIZE=1``, there is no process
group at all and every helper here is the identity: a one-process run is the plain loop.

What a rank does (the trainer calls the helpers below, the tensors never leave ``update.ppo_update``):

- rollouts: each rank runs its contiguous block of the step's ``tasks_per_step`` tasks (:func:`shard`), whole groups,
  so group advantages need nothing from the other ranks; episodes are seeded by their global index (``rollout``),
  so N ranks sample what one process samples;
- update: ``DDP(TokenScorer(model))`` (or FSDP, GPU only, untested here), the mini-batch rows and token counts taken
  from the GLOBAL batch inside ``ppo_update``;
- metrics (:func:`reduce_metrics`), evaluation results (:func:`gather`) and new peers (:func:`share_peers`) are
  exchanged once per step as small pickled objects;
- rank 0 alone writes the metrics file, the progress bar and the checkpoint (:func:`on_rank0`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


def setup(cfg: Any) -> None:
    """Join torchrun's process group when there is one (on CUDA, rank ``LOCAL_RANK`` makes ``cuda`` its GPU).

    Refuses a ``tasks_per_step`` that the world size does not divide (pydantic cannot know the world size) and a
    device with an index, before anything is loaded."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return
    if cfg.tasks_per_step % world:
        raise ValueError(
            f"tasks_per_step = {cfg.tasks_per_step} is not divisible by the world size {world} (torchrun "
            f"--nproc_per_node x nodes): every rank runs whole task groups; set tasks_per_step to a multiple of {world}"
        )
    if cfg.device.startswith("cuda:"):
        raise ValueError(f"device = {cfg.device!r} under torchrun would put every rank on one GPU; set device=cuda "
                         "(each rank then uses the GPU of its LOCAL_RANK)")
    if cfg.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" now means this rank's GPU
    if not dist.is_initialized():
        # one rank's rollouts can outlast the others' by minutes (long episodes): a generous collective timeout
        dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_rank0() -> bool:
    return rank() == 0


def launched_rank() -> int:
    """torchrun's ``RANK`` of this process (0 without torchrun), valid before and after the process group exists."""
    return int(os.environ.get("RANK", "0"))


def shard(items: Sequence[T]) -> tuple[list[T], int]:
    """This rank's contiguous block of ``items`` and the global index of its first item (blocks differ in size by
    at most one when the world size does not divide ``len(items)``)."""
    n, world, r = len(items), world_size(), rank()
    start = r * (n // world) + min(r, n % world)
    stop = start + n // world + (1 if r < n % world else 0)
    return list(items[start:stop]), start


def gather(items: list[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order (on every rank)."""
    if world_size() == 1:
        return items
    parts: list[list[T] | None] = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in (part or [])]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def reduce_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """One step's metrics over all ranks: ``time/*`` the slowest rank's, ``train/batch_tokens`` the sum, everything
    else the mean of the ranks that logged it.

    Every rank holds the same number of episodes and groups, so the mean of the ranks' per-episode and per-group
    means (reward, pass rate, lengths, groups with signal) is the global mean; per-token means (``actor/*``,
    ``train/token_adv_abs_mean``) are means of the ranks' means. Keys may differ between ranks (an algorithm may log
    a statistic only when it happened), so the dicts travel as objects, not as one tensor."""
    if world_size() == 1:
        return metrics
    per_rank: list[dict[str, Any] | None] = [None] * world_size()
    dist.all_gather_object(per_rank, metrics)
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for m in per_rank for k in (m or {})):
        values = [m[key] for m in per_rank if m and key in m]
        if not all(isinstance(v, (int, float)) for v in values):
            out[key] = values[0]
        elif key.startswith("time/"):
            out[key] = max(values)
        elif key == "train/batch_tokens":
            out[key] = sum(values)
        else:
            out[key] = sum(values) / len(values)
    return out


def on_rank0(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on rank 0 while the others wait; every rank returns rank 0's result."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    result = [fn(*args, **kwargs) if is_rank0() else None]
    dist.broadcast_object_list(result, src=0)
    return result[0]


class NoLogger:
    """The metrics logger of the ranks other than 0: writes nothing (rank 0 logs the reduced metrics)."""

    path: Path | None = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def rows(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


def share_peers(peers: Any, task_ids: Sequence[str], step: int) -> None:
    """Add the episodes the other ranks recorded this step to this rank's PeerBuffer, so every rank (and rank 0's
    checkpoint) holds every rank's peers. Per task the order is the one process's order whenever a task's episodes
    all ran on one rank (a task drawn twice in one step, on two ranks, is the exception)."""
    if world_size() == 1:
        return
    mine = [ep for tid in dict.fromkeys(task_ids) for ep in peers.episodes(tid) if ep.step == step]
    own = {ep.episode_id for ep in mine}
    for ep in gather(mine):
        if ep.episode_id not in own:
            peers.add(ep)


# -- the update's wrapper -------------------------------------------------------------------------------------------


def wrap_for_update(scorer: nn.Module, kind: str) -> nn.Module:
    """The module ``ppo_update`` runs: ``scorer`` itself in one process, else ``DDP(scorer)`` or, with
    ``kind="fsdp"`` (CUDA only; not exercised by the test suite), ``FullyShardedDataParallel(scorer)``."""
    if world_size() == 1:
        return scorer
    if kind == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP(scorer, use_orig_params=True, device_id=torch.cuda.current_device(), sync_module_states=True)
    from torch.nn.parallel import DistributedDataParallel as DDP

    # no buffer sync in forward: the forward then holds no collective (every rank loaded the same weights and buffers)
    on_gpu = next(scorer.parameters()).is_cuda
    return DDP(scorer, device_ids=[torch.cuda.current_device()] if on_gpu else None, forward_sync_buffers=False)


def is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return isinstance(module, FSDP)


@contextlib.contextmanager
def full_params(module: nn.Module) -> Iterator[None]:
    """FSDP: the whole model on every rank inside the block (generation, scoring, evaluation, saving run the
    unwrapped model); DDP and one process: nothing to do."""
    if not is_fsdp(module):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.summon_full_params(module, writeback=False):
        yield


def grad_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """The backward of a micro-batch: reduce gradients across ranks only when ``sync`` (the mini-batch's last)."""
    if sync or not hasattr(module, "no_sync"):
        return contextlib.nullcontext()
    return module.no_sync()


def clip_grad_norm(module: nn.Module, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """The global gradient norm, clipped (FSDP holds gradient shards: its own clip reduces the norm across ranks)."""
    if is_fsdp(module):
        return module.clip_grad_norm_(max_norm)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state to checkpoint, the same on every rank (FSDP: gathered from the shards; collective)."""
    if is_fsdp(module):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.optim_state_dict(module, optimizer)
    return optimizer.state_dict()


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if is_fsdp(module):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        state = FSDP.optim_state_dict_to_load(module, optimizer, state)
    optimizer.load_state_dict(state)
