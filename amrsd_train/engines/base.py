"""The Engine protocol: what every generation + scoring backend (hf, vllm, openai) provides.

An engine turns token-id prompts into sampled completions and scores given token sequences under its
current weights. It works on token ids, never on chat messages: the rollout renders conversations with
the tokenizer's chat template and hands over ids, and it gets back the *sampled* ids (never a
re-tokenisation of the text), so the ids the trainer optimises are exactly the ids the policy produced.

Log-probability convention (shared by ``generate`` and ``score``, so the two agree to float precision):
``logp = log_softmax(logits)`` of the model's raw next-token logits at temperature 1, with no top-k /
top-p filtering, evaluated for the token that actually follows. This is ``log pi_theta(y_t | y_<t)``
under the weights the engine held when it sampled, i.e. PPO's ``old_logp``. It is *not* the log-probability
under the tempered or truncated distribution that was sampled from (that one is a sampling device, not the
policy being optimised).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

FinishReason = Literal["stop", "length", "stop_string"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions.

    Attributes:
        temperature: divides the logits before sampling; ``0`` means greedy (argmax), which ignores
            ``top_p``, ``top_k`` and ``seed``.
        top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability reaches
            ``top_p`` (always at least one token); ``1.0`` turns it off.
        top_k: keep only the ``top_k`` most likely tokens; ``0`` turns it off.
        max_new_tokens: at most this many tokens per completion (a stop token counts).
        n: completions per prompt.
        stop_token_ids: ids that end a completion besides the model's EOS ids (which always stop it).
            The stop token is kept in ``Completion.token_ids`` (the policy must learn to emit it) but not in
            ``Completion.text``.
        stop_strings: a completion ends at the first token whose decoded text completes one of these
            strings. The string is kept in the text and ids (e.g. stop right after ``</tool_call>`` so the
            environment can parse the call).
        seed: seeds sampling; the same prompts, params and weights give the same completions, independent
            of batch size. ``None`` draws a fresh seed.
        prompt_seeds: one seed per prompt, used instead of ``seed``: prompt ``i``'s completions depend on
            ``prompt_seeds[i]`` alone, not on which other prompts share the request or where (the trainer seeds
            each episode by its global index, so a run sharded over ranks samples what one process samples).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    n: int = 1
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    prompt_seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool):
            raise TypeError(f"temperature must be a number, got {self.temperature!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {self.temperature}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not is_int(self.n) or self.n < 1:
            raise ValueError(f"n must be an int >= 1, got {self.n!r}")
        if isinstance(self.stop_token_ids, (str, bytes)) or not isinstance(self.stop_token_ids, Sequence):
            raise TypeError(f"stop_token_ids must be a sequence of ints, got {self.stop_token_ids!r}")
        if not all(is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be ints >= 0, got {self.stop_token_ids!r}")
        if isinstance(self.stop_strings, str):
            raise TypeError(f"stop_strings must be a sequence of strings, not one string; use ({self.stop_strings!r},)")
        if not isinstance(self.stop_strings, Sequence) or not all(isinstance(s, str) and s for s in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if self.prompt_seeds is not None:
            if isinstance(self.prompt_seeds, (str, bytes)) or not isinstance(self.prompt_seeds, Sequence):
                raise TypeError(f"prompt_seeds must be a sequence of ints, got {self.prompt_seeds!r}")
            if not all(is_int(s) and s >= 0 for s in self.prompt_seeds):
                raise ValueError(f"prompt_seeds must be ints >= 0, got {self.prompt_seeds!r}")
            object.__setattr__(self, "prompt_seeds", tuple(self.prompt_seeds))
        # Lists are accepted for convenience and stored as tuples so the params stay hashable.
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))

    def check_prompt_seeds(self, n_prompts: int) -> None:
        """Raise unless ``prompt_seeds`` is None or holds one seed per prompt."""
        if self.prompt_seeds is not None and len(self.prompt_seeds) != n_prompts:
            raise ValueError(f"prompt_seeds has {len(self.prompt_seeds)} seeds for {n_prompts} prompts; "
                             "give one seed per prompt")

    @property
    def greedy(self) -> bool:
        """True when ``temperature == 0`` (argmax decoding)."""
        return self.temperature == 0.0


@dataclass
class Completion:
    """One sampled continuation of a prompt.

    Attributes:
        token_ids: the sampled ids, in order, including a final stop token (EOS or ``stop_token_ids``).
        logprobs: ``logprobs[i] = log pi_theta(token_ids[i] | prompt, token_ids[:i])`` under the raw model at
            temperature 1 without top-k/top-p filtering (see the module docstring); same length as
            ``token_ids``.
        text: exactly ``tokenizer.decode(ids, skip_special_tokens=False)`` of ``token_ids`` without a final
            stop token. When a stop string ends inside a token, the text runs to the end of that token.
        finish_reason: ``stop`` (a stop token), ``stop_string`` or ``length`` (``max_new_tokens`` or the
            model's context length reached).
    """

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: FinishReason


@runtime_checkable
class Engine(Protocol):
    """A generation + scoring backend.

    Attributes:
        tokenizer: the Hugging Face tokenizer matching the engine's model (chat template included).
    """

    tokenizer: object

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """Sample ``params.n`` completions for every prompt.

        Args:
            prompts: token-id prompts (already chat-templated, generation prompt included); none empty.
            params: sampling settings.

        Returns:
            ``result[i][j]`` is the j-th completion of ``prompts[i]``; ``len(result[i]) == params.n``.
        """
        ...

    def score(
        self, sequences: Sequence[Sequence[int]], loss_mask: Sequence[Sequence[int]] | None = None
    ) -> list[Tensor]:
        """Per-token log-probabilities of given sequences, without gradient.

        Args:
            sequences: token-id sequences (prompt + response), each of length ``L_i >= 1``.
            loss_mask: optional, one 0/1 sequence of length ``L_i`` per sequence; only positions where it
                is 1 are computed (a saving on long prompts), the others are returned as 0.0.

        Returns:
            One float32 CPU tensor of shape ``[L_i]`` per sequence with ``out[t] = log p(ids[t] | ids[:t])``
            for ``t >= 1``; ``out[0] = 0.0`` (the first token has no context to be scored against), as are
            masked-out positions.
        """
        ...

    def update_weights(self, weights: nn.Module | Mapping[str, Tensor]) -> None:
        """Make the engine sample and score with these weights from now on.

        Args:
            weights: the trainer's model (an ``nn.Module``, possibly DDP-wrapped) or its state dict.
        """
        ...


def unwrap_model(module: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` / ``torch.compile`` wrapper (the module itself otherwise)."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def state_dict_of(weights: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """A state dict from either a module (unwrapped first) or a mapping; TypeError for anything else."""
    if isinstance(weights, nn.Module):
        return unwrap_model(weights).state_dict()
    if isinstance(weights, Mapping):
        bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"state dict values must be tensors; not for keys {bad[:5]}")
        return weights
    raise TypeError(f"update_weights takes an nn.Module or a state dict, got {type(weights).__name__}")


# -------------------------------------------------------------------------------- shared by the server-side engines
# (vllm and openai hand ids to another process, so they check them first and map its answers back the same way)


def checked_ids(what: str, seq: Sequence[int] | Tensor, *, max_model_len: int, vocab_size: int) -> list[int]:
    """``seq`` as a list of ints, or a ValueError naming ``what``: empty, longer than the context, or an id outside
    the vocabulary (a server would answer those with an opaque 400, or not at all)."""
    ids = seq.tolist() if isinstance(seq, Tensor) else [int(t) for t in seq]
    if not ids:
        raise ValueError(f"{what} is empty; every sequence needs at least one token")
    if len(ids) > max_model_len:
        raise ValueError(f"{what} has {len(ids)} tokens, more than max_model_len={max_model_len}")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"{what} holds ids outside [0, {vocab_size})")
    return ids


def generation_budget(i: int, prompt: Sequence[int], params: SamplingParams, max_model_len: int) -> int:
    """How many tokens ``prompts[i]`` may generate: ``max_new_tokens``, cut to the room left in the context."""
    room = max_model_len - len(prompt)
    if room < 1:
        raise ValueError(f"prompts[{i}] has {len(prompt)} tokens, leaving no room to generate within "
                         f"max_model_len={max_model_len}")
    return min(params.max_new_tokens, room)


def request_seed(params: SamplingParams, i: int) -> int | None:
    """The seed of prompt ``i``'s request (its ``prompt_seeds`` entry, else one derived from ``seed``); the server
    draws the request's n samples from it."""
    if params.prompt_seeds is not None:
        return params.prompt_seeds[i] % (2**63)
    return None if params.seed is None else (params.seed * 1_000_003 + i) % (2**63)


def decoded_completion(tokenizer: object, token_ids: list[int], logprobs: list[float],
                       reason: FinishReason) -> Completion:
    """A Completion whose text is the decoded ids without a final stop id (EOS / ``stop_token_ids``: kept in the
    ids, which the trainer optimises, but not in the text)."""
    text_ids = token_ids[:-1] if reason == "stop" else token_ids
    text = tokenizer.decode(text_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return Completion(token_ids=token_ids, logprobs=logprobs, text=text, finish_reason=reason)


def score_masks(loss_mask: Sequence[Sequence[int]] | None, seqs: Sequence[Sequence[int]]) -> list[Tensor | None]:
    """``score``'s ``loss_mask`` as one bool tensor per sequence (None without a mask), or a ValueError naming the
    mask that does not fit its sequence."""
    if loss_mask is None:
        return [None] * len(seqs)
    if isinstance(loss_mask, (str, bytes)) or len(loss_mask) != len(seqs):
        raise ValueError(f"loss_mask must hold one mask per sequence ({len(seqs)})")
    masks: list[Tensor | None] = []
    for i, (ids, m) in enumerate(zip(seqs, loss_mask)):
        mask = torch.as_tensor(m.tolist() if isinstance(m, Tensor) else list(m)).reshape(-1)
        if mask.numel() != len(ids):
            raise ValueError(f"loss_mask[{i}] has {mask.numel()} entries for a sequence of {len(ids)} tokens")
        masks.append(mask != 0)
    return masks
