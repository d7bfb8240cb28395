"""The ``openai`` engine: sampling and scoring through a remote OpenAI-compatible server (vLLM's ``vllm serve``).

What is supported: the ``Engine`` contract of ``engines/base.py`` over HTTP, with token ids both ways.

* ``generate`` posts one ``/v1/completions`` request per prompt with the token ids as the prompt
  (``"prompt": [ids...]``), ``n``, ``temperature``, ``top_p``, ``top_k``, ``max_tokens``, ``stop``,
  ``stop_token_ids``, a per-prompt ``seed``, ``include_stop_str_in_output: true``, ``skip_special_tokens: false``
  and ``logprobs: 1`` with vLLM's ``return_tokens_as_token_ids: true``: the sampled tokens come back as
  ``"token_id:123"``, so ``Completion.token_ids`` are exactly the ids the server sampled (never a re-tokenisation
  of the text); ``Completion.text`` is decoded from them locally, as the other engines do.
* ``score`` posts the sequence as a prompt with ``max_tokens: 1`` and vLLM's ``prompt_logprobs: 0``
  (``score_via="prompt_logprobs"``, the default), or with ``echo: true, logprobs: 0, max_tokens: 0``
  (``score_via="echo"``, the legacy OpenAI way, for servers without ``prompt_logprobs``); both are tested against
  vLLM and give the same numbers.
* ``update_weights`` is **not** supported: a remote server cannot take the trainer's in-memory weights (vLLM's
  OpenAI server exposes no weight-update endpoint outside its development mode, and reloading a checkpoint from
  disk after every step would be neither safe with requests in flight nor cheap). It raises
  ``NotImplementedError``. Use this engine for evaluation and for sampling from a fixed policy, and train with
  ``engine: vllm`` (vLLM colocated in the trainer's process, weights pushed in memory) or ``engine: hf``.

Log-probabilities: the ``Engine`` convention is the raw temperature-1 ``log_softmax`` of the model's logits (PPO's
``old_logp``). vLLM's server reports the log-probs of the *processed* (tempered / truncated) distribution unless it
is started with ``--logprobs-mode raw_logprobs``; only then do the log-probs of ``generate`` equal the ``hf``
engine's ``score`` (prompt log-probs are raw either way). The engine cannot see the server's flag; start it as::

    VLLM_CPU_KVCACHE_SPACE=1 vllm serve /path/to/model_folder --host 127.0.0.1 --port 8000 \\
        --dtype float32 --max-model-len 1024 --logprobs-mode raw_logprobs      # --enforce-eager for small models

then ``make_engine("openai", base_url="http://127.0.0.1:8000/v1", model="/path/to/model_folder")``. ``model`` is
the served model name (vLLM's default is the path it was started with; ``$OPENAI_MODEL``, or the first model
``/v1/models`` lists, otherwise); when it is a local folder the tokenizer is loaded from it, otherwise pass
``tokenizer=`` (an object or a folder) -- it must be the served model's tokenizer.

Transport: an ``httpx.AsyncClient`` with a connection pool runs on a private event loop in a background thread;
``generate`` / ``score`` are synchronous facades that fan out all requests at once, at most ``max_concurrency`` in
flight. Connection errors, dropped connections, HTTP 5xx and 429 are retried ``max_retries`` times with
exponential backoff (``Retry-After`` is honoured); other 4xx answers and read timeouts are not retried. When a
request fails for good, the call raises :class:`OpenAIEngineError` naming the URL, the attempts and the last
failure, and the batch's other requests are cancelled -- a server that dies mid-batch ends the call within the
retry budget instead of hanging. Construction queries ``/v1/models`` (with the same retries), so a wrong URL fails
at once, naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
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
)

__all__ = ["OpenAIEngine", "OpenAIEngineError"]

T = TypeVar("T")
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class OpenAIEngineError(RuntimeError):
    """A request to the server failed for good (after the retries, or with a non-retryable answer)."""


class OpenAIEngine:
    """Sampling and scoring against an OpenAI-compatible ``/v1/completions`` server (implements ``Engine``).

    Args:
        model: the served model name; when it is a local model folder, the tokenizer is loaded from it. Default
            ``$OPENAI_MODEL``, else the first model the server lists. An ``nn.Module`` is refused (a remote server
            cannot take the trainer's weights; see the module docstring).
        tokenizer: the served model's tokenizer, or a folder holding it (default: loaded from ``model`` or from
            the ``root`` folder ``/v1/models`` reports, when that folder exists here).
        base_url: the server's OpenAI base, e.g. ``http://127.0.0.1:8000/v1`` (default ``$OPENAI_BASE_URL``).
        api_key: bearer token (default ``$OPENAI_API_KEY``; local servers usually ignore it).
        device: accepted for ``make_engine`` compatibility and ignored (the server decides).
        max_concurrency: requests in flight at once (also the connection pool size).
        timeout_s: read/write timeout of one request; connect_timeout_s: of opening a connection.
        max_retries: retries after the first attempt, for connection errors, 5xx and 429.
        backoff_s: first retry delay, doubled each retry up to ``max_backoff_s`` (with +-25% jitter).
        max_model_len: context length (default: what ``/v1/models`` reports).
        score_via: ``prompt_logprobs`` (vLLM's extension) or ``echo`` (legacy ``echo`` + ``logprobs``).
        extra_body: extra fields merged into every ``/v1/completions`` request (e.g. ``{"min_tokens": 4}``).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        tokenizer: object | str | os.PathLike[str] | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        device: str | None = None,
        max_concurrency: int = 64,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_model_len: int | None = None,
        score_via: Literal["prompt_logprobs", "echo"] = "prompt_logprobs",
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(model, nn.Module):
            raise TypeError(
                "engine: openai samples from a remote server, which cannot take the trainer's model or weights; "
                "train with engine: vllm (colocated, weights pushed in memory) or engine: hf, and use engine: openai "
                "for evaluation / sampling from a fixed served model"
            )
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
        if not self.base_url:
            raise ValueError("engine: openai needs base_url (or $OPENAI_BASE_URL), e.g. http://127.0.0.1:8000/v1")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if score_via not in ("prompt_logprobs", "echo"):
            raise ValueError(f"score_via must be 'prompt_logprobs' or 'echo', got {score_via!r}")
        self.device = device or "remote"
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.score_via = score_via
        self.extra_body = dict(extra_body or {})
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._headers = {"Authorization": f"Bearer {key}"}
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amrsd-openai-engine", daemon=True)
        self._thread.start()
        try:
            self._setup(model, tokenizer, max_model_len)
        except BaseException:
            self.close()
            raise

    def _setup(self, model, tokenizer, max_model_len: int | None) -> None:
        listing = self._run(self._request("GET", "/models"))
        served = [m for m in listing.get("data", []) if isinstance(m, dict) and m.get("id")]
        name = str(model) if model is not None else os.environ.get("OPENAI_MODEL")
        if name is None:
            if not served:
                raise OpenAIEngineError(f"{self.base_url}/models lists no model; pass model=")
            name = served[0]["id"]
        self.model = name
        info = next((m for m in served if m["id"] == name), None)
        if served and info is None:
            raise ValueError(f"the server at {self.base_url} does not serve {name!r}; it serves "
                             f"{[m['id'] for m in served]}")
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            candidates = [tokenizer] if tokenizer is not None else [name, (info or {}).get("root")]
            folder = next((Path(c) for c in candidates if c and Path(c).is_dir()), None)
            if folder is None:
                raise ValueError(f"engine: openai needs the served model's tokenizer: pass tokenizer= (an object or a "
                                 f"folder); none found at {[str(c) for c in candidates if c]}")
            tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        if max_model_len is None:
            max_model_len = (info or {}).get("max_model_len")
        if max_model_len is None:
            raise ValueError(f"{self.base_url}/models does not report max_model_len for {name!r}; pass max_model_len=")
        self.max_model_len = int(max_model_len)

    # ------------------------------------------------------------------------------------------ generate

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """Sample ``params.n`` completions per prompt (see ``Engine.generate``), one request per prompt."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        ids = [self._check(f"prompts[{i}]", p) for i, p in enumerate(prompts)]
        bodies = [{
            **self.extra_body,
            "model": self.model, "prompt": prompt, "n": params.n, "temperature": params.temperature,
            "top_p": params.top_p, "top_k": params.top_k or -1,
            "max_tokens": generation_budget(i, prompt, params, self.max_model_len),
            "stop": list(params.stop_strings), "stop_token_ids": list(params.stop_token_ids),
            "include_stop_str_in_output": True, "skip_special_tokens": False,
            "spaces_between_special_tokens": False, "logprobs": 1, "return_tokens_as_token_ids": True,
            "seed": request_seed(params, i),
        } for i, prompt in enumerate(ids)]
        answers = self._run(self._gather([self._request("POST", "/completions", body) for body in bodies]))
        return [self._completions(i, answer, params) for i, answer in enumerate(answers)]

    def _completions(self, i: int, answer: dict, params: SamplingParams) -> list[Completion]:
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != params.n:
            raise OpenAIEngineError(f"{self.base_url}/completions returned {len(choices)} choices for prompts[{i}], "
                                    f"expected n={params.n}")
        out = []
        for choice in choices:
            logprobs = choice.get("logprobs") or {}
            tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
            if tokens is None or values is None or len(tokens) != len(values):
                raise OpenAIEngineError(f"{self.base_url}/completions returned no per-token log-probs; the engine "
                                        "needs an OpenAI-compatible server that honours logprobs (e.g. vLLM)")
            token_ids = [self._token_id(t) for t in tokens]
            reason: FinishReason
            if choice.get("finish_reason") == "length":
                reason = "length"
            elif choice.get("finish_reason") == "stop":
                reason = "stop_string" if isinstance(choice.get("stop_reason"), str) else "stop"
            else:
                raise OpenAIEngineError(f"{self.base_url}/completions ended prompts[{i}] with finish_reason="
                                        f"{choice.get('finish_reason')!r}")
            out.append(decoded_completion(self.tokenizer, token_ids, [float(v) for v in values], reason))
        return out

    def _token_id(self, token: str) -> int:
        if isinstance(token, str) and token.startswith("token_id:"):
            return int(token[len("token_id:"):])
        raise OpenAIEngineError(
            f"{self.base_url}/completions returned token {token!r} instead of 'token_id:<id>': the server ignores "
            "return_tokens_as_token_ids (a vLLM extension), so the sampled ids cannot be recovered exactly"
        )

    # ------------------------------------------------------------------------------------------ score

    def score(self, sequences: Sequence[Sequence[int]], loss_mask: Sequence[Sequence[int]] | None = None
              ) -> list[Tensor]:
        """``log p(ids[t] | ids[:t])`` from the server's prompt log-probs; 0.0 at t = 0 and where the mask is 0."""
        seqs = [self._check(f"sequences[{i}]", s) for i, s in enumerate(sequences)]
        masks = score_masks(loss_mask, seqs)
        wanted = [i for i, ids in enumerate(seqs) if len(ids) > 1 and (masks[i] is None or bool(masks[i][1:].any()))]
        for i in wanted:
            if len(seqs[i]) >= self.max_model_len:
                raise ValueError(f"sequences[{i}] has {len(seqs[i])} tokens; scoring on the server needs fewer than "
                                 f"max_model_len={self.max_model_len}")
        if self.score_via == "echo":
            extra = {"echo": True, "logprobs": 0, "max_tokens": 0, "return_tokens_as_token_ids": True}
        else:
            extra = {"prompt_logprobs": 0, "max_tokens": 1}
        bodies = [{**self.extra_body, "model": self.model, "prompt": seqs[i], "temperature": 1.0, **extra}
                  for i in wanted]
        answers = dict(zip(wanted, self._run(self._gather([self._request("POST", "/completions", b) for b in bodies]))))
        result = []
        for i, ids in enumerate(seqs):
            logp = torch.zeros(len(ids), dtype=torch.float32)
            if i in answers:
                logp[1:] = torch.tensor(self._prompt_logprobs(i, ids, answers[i]), dtype=torch.float32)
            if masks[i] is not None:
                logp = logp.masked_fill(~masks[i], 0.0)
            result.append(logp)
        return result

    def _prompt_logprobs(self, i: int, ids: list[int], answer: dict) -> list[float]:
        """``log p(ids[t] | ids[:t])`` for t = 1 .. L-1 from one scoring answer."""
        try:
            choice = answer["choices"][0]
            if self.score_via == "echo":
                logprobs = choice["logprobs"]
                tokens = [self._token_id(t) for t in logprobs["tokens"][: len(ids)]]
                values = logprobs["token_logprobs"][1: len(ids)]
                if tokens != ids:
                    raise OpenAIEngineError(f"{self.base_url}/completions echoed other ids than sequences[{i}]")
                return [float(v) for v in values]
            entries = choice.get("prompt_logprobs")
            if entries is None:
                raise OpenAIEngineError(
                    f"{self.base_url}/completions returned no prompt_logprobs (a vLLM extension); use "
                    "score_via='echo' with servers that do not support it")
            return [float(entries[t][str(ids[t])]["logprob"]) for t in range(1, len(ids))]
        except (KeyError, IndexError, TypeError) as exc:
            raise OpenAIEngineError(f"{self.base_url}/completions returned malformed log-probs for sequences[{i}]: "
                                    f"{type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------------------------------ weights

    def update_weights(self, weights: nn.Module | Mapping[str, Tensor]) -> None:
        """Not supported: a remote server cannot take the trainer's weights (see the module docstring)."""
        raise NotImplementedError(
            f"engine: openai cannot update the weights of the remote server at {self.base_url}: an OpenAI-compatible "
            "server has no endpoint to receive the trainer's weights. Use engine: openai for evaluation or for "
            "sampling from a fixed served model, and train with engine: vllm (vLLM colocated in the trainer's "
            "process, weights pushed in memory after every step) or engine: hf."
        )

    # ------------------------------------------------------------------------------------------ transport

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the engine's loop and wait for it (Ctrl-C cancels it)."""
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("the openai engine is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def _gather(self, coros: list[Coroutine[Any, Any, T]]) -> list[T]:
        """All results in order; on the first failure the others are cancelled and the failure raised."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request with retries; returns the decoded JSON answer."""
        if self._client is None:  # created on the loop that uses it
            self._client = httpx.AsyncClient(
                base_url=self.base_url, headers=self._headers, timeout=self._timeout,
                limits=httpx.Limits(max_connections=self.max_concurrency,
                                    max_keepalive_connections=self.max_concurrency))
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        url = f"{self.base_url}{path}"
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.75, 1.25)
            try:
                async with self._semaphore:
                    response = await self._client.request(method, path, json=body)
            except httpx.ReadTimeout as exc:  # the server is up but too slow; a retry would likely time out again
                raise OpenAIEngineError(f"{method} {url} timed out after {self._timeout.read}s waiting for the "
                                        f"answer (raise timeout_s?): {exc!r}") from exc
            except httpx.TransportError as exc:  # refused, reset, dropped mid-answer, connect timeout, ...
                last = f"{type(exc).__name__}: {exc or 'connection failed'}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise OpenAIEngineError(f"{method} {url} answered 200 with invalid JSON: "
                                                f"{response.text[:300]!r}") from exc
                last = f"HTTP {response.status_code}: {response.text[:500]}"
                if response.status_code not in _RETRY_STATUS:
                    raise OpenAIEngineError(f"{method} {url} answered {last}")
                with contextlib.suppress(TypeError, ValueError):
                    delay = min(self.max_backoff_s * 4, float(response.headers["Retry-After"]))
            if attempt < self.max_retries:
                await asyncio.sleep(delay)
        raise OpenAIEngineError(f"{method} {url} failed after {self.max_retries + 1} attempt(s); last failure: {last}")

    # ------------------------------------------------------------------------------------------ misc

    def _check(self, what: str, seq: Sequence[int]) -> list[int]:
        return checked_ids(what, seq, max_model_len=self.max_model_len, vocab_size=self.vocab_size)

    def close(self) -> None:
        """Close the connection pool and stop the background loop (idempotent)."""
        if self._loop.is_closed():
            return
        if self._client is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(timeout=10)
            self._client = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> OpenAIEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
