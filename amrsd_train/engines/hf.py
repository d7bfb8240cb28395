"""The ``hf`` engine: batched sampling and scoring with a plain ``transformers`` causal LM (CPU or GPU).

Generation is a hand-written loop over ``model(input_ids, attention_mask, position_ids, past_key_values)``
rather than ``model.generate``, because the trainer needs things ``generate`` does not give together: the
exact sampled ids with their raw temperature-1 log-probabilities (PPO's ``old_logp``, see
``engines/base.py``), per-row stop strings checked on the decoded tail, per-row seeds that make sampling
independent of batching, and rows that stop costing compute once they finish.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import numbers
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from amrsd_train.engines.base import Completion, FinishReason, SamplingParams, state_dict_of, unwrap_model
from amrsd_train.update import TokenScorer


@dataclass
class _Row:
    """Generation state of one (prompt, sample) row."""

    prompt_index: int
    generator: torch.Generator | None
    budget: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason | None = None


def _row_seed(base_seed: int, row: int) -> int:
    """A 63-bit seed for row ``row`` of a request seeded with ``base_seed`` (hash-mixed, so neighbouring
    rows and neighbouring base seeds get unrelated streams)."""
    digest = hashlib.blake2b(f"{base_seed}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def filter_logits(scores: Tensor, *, top_k: int, top_p: float) -> Tensor:
    """Mask logits outside the top-k / nucleus (top-p) set with -inf.

    Args:
        scores: ``[B, V]`` temperature-scaled logits (float32).
        top_k: keep the ``top_k`` largest (``0`` = off); values tied with the k-th are kept too.
        top_p: keep the smallest prefix of tokens sorted by probability whose mass reaches ``top_p``
            (``1.0`` = off); the most likely token is always kept.

    Returns:
        ``[B, V]`` logits with removed entries set to ``-inf``.
    """
    if top_k > 0 and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        # Remove a token when the mass strictly before it already reaches top_p (keeps the first token).
        remove_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


class HFEngine:
    """Generation + scoring with a ``transformers`` ``AutoModelForCausalLM`` (implements ``Engine``).

    Sampling: prompts are left-padded into micro-batches of at most ``max_batch_size`` rows (``n`` rows per
    prompt; each distinct prompt is prefilled once and its KV cache copied to its rows), then decoded token
    by token with a KV cache. Each row has its own ``torch.Generator`` seeded from ``params.seed`` and the
    row's index, so seeded results do not depend on batch size. A row ends on an EOS / stop token id, on a
    stop string completed by its latest token, at ``max_new_tokens`` or at ``max_model_len``; finished rows
    are dropped from the batch and its cache. ``temperature == 0`` is greedy.

    Scoring: sequences are sorted by length, right-padded into micro-batches and run in one forward each;
    only the logits needed (positions where the loss mask is 1) are computed, and micro-batches are sized so
    that their logits stay under ``score_logits_budget`` elements.

    Weights: pass the trainer's own module as ``model`` and the engine samples with the live weights
    (``update_weights(model)`` is then a no-op); or give a path / a separate module and call
    ``update_weights`` with the trainer's module or state dict to copy the weights in. The engine switches
    the model to eval mode and ``torch.no_grad`` while it works and restores training mode afterwards.

    Args:
        model: a ``save_pretrained`` folder, or an ``nn.Module`` (then ``tokenizer`` is required and the
            module is used where it is: ``device``/``dtype`` must be None or match it).
        tokenizer: the tokenizer; loaded from the folder when ``model`` is a path.
        device: device to load a folder onto (default ``cpu``).
        dtype: dtype to load a folder in (``torch.float32`` default; a name such as ``"bfloat16"`` works).
        max_batch_size: rows per forward pass, for both generation and scoring.
        max_model_len: context length (prompt + completion); default the model's
            ``max_position_embeddings``.
        score_logits_budget: at most this many logit elements (rows x positions x vocab) per scoring forward.

    Example:
        >>> engine = HFEngine(resolve_model("tiny"))
        >>> ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        >>> [[completion]] = engine.generate([ids], SamplingParams(temperature=0.0, max_new_tokens=64))
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | nn.Module,
        tokenizer: object | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        max_batch_size: int = 32,
        max_model_len: int | None = None,
        score_logits_budget: int = 1 << 27,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(dtype, str):
            resolved = getattr(torch, dtype, None)
            if not isinstance(resolved, torch.dtype):
                raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
            dtype = resolved
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_dir():
                raise ValueError(
                    f"model folder {path} does not exist; turn model names into folders with "
                    "amrsd_train.models.resolve_model"
                )
            self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
            loaded = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
            self.model: nn.Module = loaded.to(torch.device(device or "cpu"))
        elif isinstance(model, nn.Module):
            if tokenizer is None:
                raise TypeError("HFEngine(model=<nn.Module>) needs tokenizer=; only a model folder carries its own")
            self.model = unwrap_model(model)
            param = next(self.model.parameters())
            wanted = torch.device(device) if device is not None else None
            if wanted is not None and (
                wanted.type != param.device.type or wanted.index not in (None, param.device.index)
            ):
                raise ValueError(
                    f"the given model is on {param.device}, not {device}; move it first (the engine shares it and "
                    "does not move a module it does not own)"
                )
            if dtype is not None and dtype != param.dtype:
                raise ValueError(f"the given model is {param.dtype}, not {dtype}; convert it first")
            self.tokenizer = tokenizer
        else:
            raise TypeError(f"model must be a folder path or an nn.Module, got {type(model).__name__}")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        if not isinstance(score_logits_budget, int) or score_logits_budget < 1:
            raise ValueError(f"score_logits_budget must be an int >= 1, got {score_logits_budget!r}")
        config = self.model.config
        self.max_batch_size = max_batch_size
        self.score_logits_budget = score_logits_budget
        self.max_model_len = int(max_model_len or config.max_position_embeddings)
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.eos_token_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos_token_ids))
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._scorer = TokenScorer(self.model, logits_budget=min(score_logits_budget, 1 << 24))

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return next(self.model.parameters()).device

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        generation_config = getattr(self.model, "generation_config", None)
        for source in (
            self.tokenizer.eos_token_id,
            getattr(generation_config, "eos_token_id", None),
            getattr(self.model.config, "eos_token_id", None),
        ):
            if source is None:
                continue
            ids.update([source] if isinstance(source, int) else source)
        if not ids:
            raise ValueError("the tokenizer and model define no EOS token id; set tokenizer.eos_token")
        return frozenset(int(i) for i in ids)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        # no_grad rather than inference_mode: the trainer uses scores in autograd graphs (as constants), which
        # inference-mode tensors forbid.
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _check_ids(self, what: str, sequences: Sequence[Sequence[int]]) -> list[list[int]]:
        if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence):
            raise TypeError(f"{what} must be a list of token-id lists, got {type(sequences).__name__}")
        out: list[list[int]] = []
        for i, seq in enumerate(sequences):
            raw = seq.tolist() if isinstance(seq, Tensor) else list(seq)
            if not raw:
                raise ValueError(f"{what}[{i}] is empty; every sequence needs at least one token")
            if not all(isinstance(t, numbers.Integral) and 0 <= t < self.vocab_size for t in raw):
                raise ValueError(f"{what}[{i}] holds ids outside [0, {self.vocab_size}) or non-integers")
            ids = [int(t) for t in raw]
            if len(ids) > self.max_model_len:
                raise ValueError(f"{what}[{i}] has {len(ids)} tokens, more than max_model_len={self.max_model_len}")
            out.append(ids)
        return out

    # ------------------------------------------------------------------------------------------ generate

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """Sample ``params.n`` completions per prompt (see ``Engine.generate``)."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        ids = self._check_ids("prompts", prompts)
        for i, prompt in enumerate(ids):
            if len(prompt) >= self.max_model_len:
                raise ValueError(
                    f"prompts[{i}] has {len(prompt)} tokens, leaving no room to generate within "
                    f"max_model_len={self.max_model_len}"
                )
        params.check_prompt_seeds(len(ids))
        base_seed = params.seed if params.seed is not None else secrets.randbits(63)
        # Greedy rows of one prompt are identical: decode one and copy it.
        per_prompt = 1 if params.greedy else params.n
        rows = [(i, j) for i in range(len(ids)) for j in range(per_prompt)]
        results: list[list[Completion]] = [[] for _ in ids]
        with self._inference():
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start : start + self.max_batch_size]
                states = [
                    _Row(
                        prompt_index=i,
                        generator=None if params.greedy else self._generator(
                            _row_seed(params.prompt_seeds[i], j) if params.prompt_seeds is not None
                            else _row_seed(base_seed, i * params.n + j)),
                        budget=min(params.max_new_tokens, self.max_model_len - len(ids[i])),
                        token_ids=[],
                        logprobs=[],
                    )
                    for i, j in chunk
                ]
                self._decode(ids, states, params)
                for state in states:
                    results[state.prompt_index].append(self._completion(state))
        if params.greedy and params.n > 1:
            results = [
                [Completion(list(c.token_ids), list(c.logprobs), c.text, c.finish_reason) for _ in range(params.n)]
                for [c] in results
            ]
        return results

    def _generator(self, seed: int) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return generator

    def _forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: object) -> Tensor:
        """Last-position logits ``[B, V]`` (float32) of one forward step that extends ``cache``."""
        kwargs = {"logits_to_keep": 1} if self._keeps_logits else {}
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            **kwargs,
        )
        return out.logits[:, -1, :].float()

    def _decode(self, prompts: list[list[int]], states: list[_Row], params: SamplingParams) -> None:
        """Run the sampling loop for one micro-batch of rows, filling each row's ids, logprobs and finish."""
        from transformers import DynamicCache

        device = self.device
        stop_ids = self.eos_token_ids | set(params.stop_token_ids)
        # A stop string of b bytes lies within the last b tokens (every token decodes to >= 1 byte).
        tail = max((len(s.encode("utf-8")) for s in params.stop_strings), default=0)

        # Prefill each distinct prompt once, left-padded so every row's next token is at the last column.
        unique = list(dict.fromkeys(state.prompt_index for state in states))
        width = max(len(prompts[i]) for i in unique)
        input_ids = torch.full((len(unique), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(unique), width), dtype=torch.long)
        for r, i in enumerate(unique):
            input_ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            attention[r, width - len(prompts[i]) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, attention, positions, cache)
        # Copy each prompt's cache / logits to its rows (indices may repeat).
        to_rows = torch.tensor([unique.index(s.prompt_index) for s in states], device=device)
        cache.batch_select_indices(to_rows)
        logits, attention, last_pos = logits[to_rows], attention[to_rows], positions[to_rows, -1]

        active = list(range(len(states)))
        while True:
            logp = torch.log_softmax(logits, dim=-1)  # [A, V] raw policy logprobs (temperature 1)
            if params.greedy:
                next_ids = logp.argmax(dim=-1)
            else:
                scores = filter_logits(logits / params.temperature, top_k=params.top_k, top_p=params.top_p)
                probs = torch.softmax(scores, dim=-1)
                next_ids = torch.cat(
                    [torch.multinomial(probs[a], 1, generator=states[r].generator) for a, r in enumerate(active)]
                )
            chosen = logp.gather(-1, next_ids[:, None]).squeeze(-1)
            keep: list[int] = []
            for a, (r, token, lp) in enumerate(zip(active, next_ids.tolist(), chosen.tolist())):
                state = states[r]
                state.token_ids.append(token)
                state.logprobs.append(lp)
                if token in stop_ids:
                    state.finish_reason = "stop"
                elif tail and self._hits_stop_string(state.token_ids[-tail:], params.stop_strings):
                    state.finish_reason = "stop_string"
                elif len(state.token_ids) >= state.budget:
                    state.finish_reason = "length"
                else:
                    keep.append(a)
            if not keep:
                return
            if len(keep) < len(active):
                # Finished rows leave the batch and the cache, so they cost nothing further.
                select = torch.tensor(keep, device=device)
                cache.batch_select_indices(select)
                attention, last_pos, next_ids = attention[select], last_pos[select], next_ids[select]
                active = [active[a] for a in keep]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            last_pos = last_pos + 1
            logits = self._forward(next_ids[:, None], attention, last_pos[:, None], cache)

    def _hits_stop_string(self, tail_ids: list[int], stop_strings: tuple[str, ...]) -> bool:
        text = self.tokenizer.decode(tail_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return any(s in text for s in stop_strings)

    def _completion(self, state: _Row) -> Completion:
        if state.finish_reason is None:
            raise RuntimeError("internal error: a generation row ended without a finish reason")
        text_ids = state.token_ids[:-1] if state.finish_reason == "stop" else state.token_ids
        text = self.tokenizer.decode(text_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return Completion(
            token_ids=state.token_ids, logprobs=state.logprobs, text=text, finish_reason=state.finish_reason
        )

    # ------------------------------------------------------------------------------------------ score

    def score(
        self, sequences: Sequence[Sequence[int]], loss_mask: Sequence[Sequence[int]] | None = None
    ) -> list[Tensor]:
        """Per-token log-probabilities ``log p(ids[t] | ids[:t])``, 0.0 at t = 0 and where the mask is 0
        (see ``Engine.score``)."""
        seqs = self._check_ids("sequences", sequences)
        needs = self._needed_positions(seqs, loss_mask)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out: list[Tensor | None] = [None] * len(seqs)
        with self._inference():
            start = 0
            while start < len(order):
                rows_fit = max(1, self.score_logits_budget // (len(seqs[order[start]]) * self.vocab_size))
                batch = order[start : start + min(self.max_batch_size, rows_fit)]
                start += len(batch)
                for i, logp in zip(batch, self._score_batch([seqs[i] for i in batch], [needs[i] for i in batch])):
                    out[i] = logp
        return out  # type: ignore[return-value]

    def _needed_positions(
        self, seqs: list[list[int]], loss_mask: Sequence[Sequence[int]] | None
    ) -> list[Tensor]:
        """For each sequence a bool ``[L]`` tensor: True where a logprob is to be computed (t >= 1, mask 1)."""
        if loss_mask is not None and (isinstance(loss_mask, (str, bytes)) or len(loss_mask) != len(seqs)):
            raise ValueError(f"loss_mask must hold one mask per sequence ({len(seqs)})")
        needs = []
        for i, ids in enumerate(seqs):
            if loss_mask is None:
                need = torch.ones(len(ids), dtype=torch.bool)
            else:
                mask = loss_mask[i]
                need = (mask.detach().cpu() if isinstance(mask, Tensor) else torch.tensor(list(mask))).reshape(-1)
                if need.numel() != len(ids):
                    raise ValueError(f"loss_mask[{i}] has {need.numel()} entries for a sequence of {len(ids)} tokens")
                if not bool(((need == 0) | (need == 1)).all()):
                    raise ValueError(f"loss_mask[{i}] must hold only 0 and 1")
                need = need.bool()
            need[0] = False
            needs.append(need)
        return needs

    def _score_batch(self, seqs: list[list[int]], needs: list[Tensor]) -> list[Tensor]:
        device = self.device
        width = len(seqs[0])
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        need = torch.zeros((len(seqs), width), dtype=torch.bool)
        for r, ids in enumerate(seqs):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention[r, : len(ids)] = 1
            need[r, : len(ids)] = needs[r]
        result = torch.zeros((len(seqs), width), dtype=torch.float32)
        if bool(need.any()):
            # the trainer's scorer: the LM head runs only where some row needs a log-prob (column t - 1 scores token t)
            logp = self._scorer(input_ids.to(device), attention.to(device), need[:, 1:].to(device))
            result[:, 1:] = logp.float().cpu()
        result = result.masked_fill(~need, 0.0)
        return [result[r, : len(ids)].clone() for r, ids in enumerate(seqs)]

    # ------------------------------------------------------------------------------------------ weights

    def update_weights(self, weights: nn.Module | Mapping[str, Tensor]) -> None:
        """Load the trainer's weights (see ``Engine.update_weights``); a no-op when the engine already shares
        the trainer's module."""
        if isinstance(weights, nn.Module) and unwrap_model(weights) is self.model:
            return
        state = state_dict_of(weights)
        result = self.model.load_state_dict(state, strict=False)
        # Tied weights may be absent from a saved state dict (e.g. lm_head tied to the embeddings); anything
        # else missing or extra means the weights belong to another architecture.
        tied = set(getattr(self.model, "_tied_weights_keys", None) or ())
        missing = [k for k in result.missing_keys if k not in tied]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"state dict does not match the engine's model: missing {missing[:5]}, "
                f"unexpected {list(result.unexpected_keys)[:5]}"
            )
