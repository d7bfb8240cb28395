"""Train with TRL's ``GRPOTrainer(environment_factory=...)`` on the AMR-SD environments.

TRL (1.16) drives a multi-turn rollout like this: for each dataset row it takes a pooled environment instance and
calls ``reset(**row)`` (every column of the row as a keyword; a returned string is appended to the last prompt
message); it renders the prompt with ``tools=`` the instance's public methods (their names, type hints and
Google-style docstrings become the JSON schemas, via ``transformers.utils.get_json_schema``); when the model's reply
parses into ``tool_calls`` it calls the matching bound method with the call's arguments as keywords and feeds
``str(result)`` back as a ``role: tool`` message; the last reply without tool calls ends the rollout. Rewards come
from ``reward_funcs(prompts=..., completions=..., environments=..., **columns)`` and, when the environment defines
it, from ``get_reward()`` (no arguments).

This module builds the three pieces for that contract:

* :func:`make_environment_factory`: a class to pass as ``environment_factory``. Its public methods are exactly the
  tools of the selected task families (``calculator``, ``python``, ...), with schemas derived from the project's
  tool declarations; each call is sent to a real ``gym.make(env_id)`` env as one assistant turn
  (``<tool_call>`` text), so it runs inside that episode's world, sandbox, caps and validation, and the env keeps
  the transcript. ``reset(task_id=...)`` starts the episode on the row's task.
* :func:`make_dataset` / :func:`task_rows`: the ``prompt`` + ``task_id`` rows of a split, from the env's catalog
  (the prompt is the very ``[system, user]`` list ``env.reset`` returns for that task).
* :func:`amrsd_reward`: the reward function. It sends the rollout's final assistant text to the env as its final
  answer and returns the env's reward (the verifier's score, minus the family's format penalty when no answer
  could be extracted; 0.0 when the rollout ended without a final answer or the env truncated it at ``max_turns``).

Why a reward function and no ``get_reward``: TRL only shows the environment the tool calls, never the final
assistant message, and ``get_reward()`` takes no argument, so the env could not verify the answer there.

Plus :func:`prepare_tokenizer`, which sets the Hermes ``<tool_call>`` response template on tokenizers whose chat
template TRL does not recognise (the project's ``hermes_tools.jinja``, used by the embedded models), and
:func:`stop_after_tool_calls`, which makes ``</tool_call>`` end a generation as in the project's own rollouts.

Notes: each TRL tool call is one env turn (TRL executes a reply's calls one by one), so a reply with two calls uses
two of the family's ``max_turns``; pass ``max_turns=`` to :func:`make_environment_factory` to allow more. Nothing
here imports ``trl`` or ``torch``; :func:`make_dataset` imports ``datasets``.

```python
# needs: trl
from trl import GRPOConfig, GRPOTrainer
from amrsd_envs.adapters.trl import amrsd_reward, make_dataset, make_environment_factory, prepare_tokenizer

families = ["tooluse.calc_arith"]
trainer = GRPOTrainer(
    model=model, processing_class=prepare_tokenizer(tokenizer), args=GRPOConfig(...),
    train_dataset=make_dataset("AMRSD-ToolUse-v0", families, n=512),
    environment_factory=make_environment_factory("AMRSD-ToolUse-v0", families),
    reward_funcs=[amrsd_reward],
)
```
"""

from __future__ import annotations

import inspect
import itertools
import types
import typing
from collections import deque
from typing import Any, Literal, Union

__all__ = [
    "HERMES_RESPONSE_TEMPLATE",
    "AMRSDToolEnvironment",
    "amrsd_reward",
    "make_dataset",
    "make_environment_factory",
    "prepare_tokenizer",
    "stop_after_tool_calls",
    "task_rows",
    "tool_method",
]

HERMES_RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close_pattern": r"</think>\s*", "content": "text"},
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}
"""``transformers`` response template (>= 5.13) for Hermes/Qwen2.5-style replies: ``<tool_call>{json}</tool_call>``
blocks become ``tool_calls``, the rest ``content`` (the same layout as TRL's Qwen3 template)."""


# -- tool methods --------------------------------------------------------------------------------------------------

_SCALARS = (str, int, float, bool, type(None), typing.Any)


def _schema_hint(annotation: Any) -> Any:
    """``annotation`` if ``transformers.utils.get_json_schema`` can turn it into a schema, else ``Any``."""
    if annotation in _SCALARS or annotation in (list, dict):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal and all(isinstance(a, (str, int, float, bool, type(None))) for a in args):
        return annotation
    if origin in (Union, types.UnionType):
        hints = [_schema_hint(a) for a in args]
        return annotation if hints == list(args) else typing.Any
    if origin is list and len(args) <= 1:
        return annotation if all(_schema_hint(a) == a for a in args) else list
    if origin is dict:
        return annotation if all(_schema_hint(a) == a for a in args) else dict
    if origin is typing.Annotated:
        return _schema_hint(args[0])
    return typing.Any


def _one_line(text: str) -> str:
    return " ".join(text.split())


def tool_method(name: str) -> Any:
    """A function ``(self, **arguments) -> str`` for the registered tool ``name`` that calls
    ``self._call_tool(name, arguments)``, with the signature, annotations, name and Google-style docstring from
    which ``transformers.utils.get_json_schema`` derives the tool's schema (its description, and per argument the
    name, type, description and whether it is required)."""
    from amrsd_envs.tools import get_tool

    spec = get_tool(name)
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {}
    arg_lines = []
    for field_name, info in spec.args_model.model_fields.items():
        key = info.alias or field_name
        hint = _schema_hint(info.annotation)
        default = inspect.Parameter.empty if info.is_required() else info.get_default(call_default_factory=True)
        params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint))
        annotations[key] = hint
        arg_lines.append(f"    {key}: {_one_line(info.description or key)}")
    annotations["return"] = str

    def method(self: Any, **arguments: Any) -> str:
        return self._call_tool(name, arguments)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = _one_line(spec.description) + ("\n\nArgs:\n" + "\n".join(arg_lines) if arg_lines else "") + (
        "\n\nReturns:\n    The tool's output, as the model sees it."
    )
    method.__annotations__ = annotations
    method.__signature__ = inspect.Signature(params, return_annotation=str)  # type: ignore[attr-defined]
    return method


# -- the environment class -----------------------------------------------------------------------------------------


class AMRSDToolEnvironment:
    """Base of the classes :func:`make_environment_factory` returns: one AMR-SD env, one episode at a time.

    TRL treats every public method but ``reset`` and ``get_reward`` as a tool, so everything else here is private
    (or an attribute): ``env`` (the gym env), ``task_id``, ``messages`` (the env's transcript of the episode),
    ``done``, ``tool_calls`` (this episode's), ``episodes`` (the last finished episodes, newest last: dicts with
    ``task_id``, ``reward``, ``correct``, ``tool_calls``, ``terminated``, ``truncated``, ``extracted``,
    ``verified``) and ``totals`` (counts over this instance's lifetime).
    """

    env_id: str = ""
    families: tuple[str, ...] | None = None
    catalog: Any = None  # the TaskCatalog shared by the instances (pass it on: make_dataset(..., tasks=cls.catalog))
    tool_names: tuple[str, ...] = ()
    _env_kwargs: dict[str, Any] = {}
    _seeds: Any = None  # itertools.count shared by the class's instances (first-reset seeds)

    def __init__(self) -> None:
        import gymnasium as gym

        import amrsd_envs  # noqa: F401  (registers the env ids)

        self.env = gym.make(self.env_id, **self._env_kwargs)
        self.task_id: str | None = None
        self.messages: list[dict[str, Any]] = []
        self.done = True
        self.tool_calls = 0
        self.episodes: deque[dict[str, Any]] = deque(maxlen=1000)
        self.totals = {"episodes": 0, "tool_calls": 0, "verified": 0, "correct": 0}
        self._seed: int | None = next(self._seeds)

    # TRL calls reset(**row): every dataset column arrives as a keyword.
    def reset(self, task_id: str | None = None, prompt: Any = None, family: str | None = None,
              split: str | None = None, **columns: Any) -> str | None:
        """Start an episode on ``task_id`` (a dataset row's task); without one, on a task sampled by the env
        (of ``family`` / ``split`` when given), whose prompt is then returned for TRL to append to the row's last
        message. ``prompt`` (the row's prompt) must be the task's own messages when both are given."""
        options: dict[str, Any] = {}
        if task_id is not None:
            options["task_id"] = task_id
        else:
            if family is not None:
                options["family"] = family
            if split is not None:
                options["split"] = split
        seed, self._seed = self._seed, None  # seed the env's sampler once, on the first reset
        obs, info = self.env.reset(seed=seed, options=options)
        self.task_id, self.messages, self.done, self.tool_calls = info["task_id"], obs, False, 0
        if task_id is None:
            return "\n\n".join(m["content"] for m in obs)
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            given = [(m.get("role"), m.get("content")) for m in prompt]
            if given != [(m["role"], m["content"]) for m in obs]:
                raise ValueError(
                    f"the dataset row's prompt is not task {task_id!r}'s prompt in {self.env_id} "
                    f"(families={self.families}); build the dataset with make_dataset() and the same env arguments"
                )
        return None

    # -- private helpers (not tools) -----------------------------------------------------------------------------

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> str:
        """Run one tool call in the episode's env (one assistant turn) and return the tool message text."""
        from amrsd_envs.toolcalls import ToolCall, render_tool_calls

        if self.done:
            return ("error: not run: the episode is over (no reset, or max_turns was reached); "
                    "give your final answer")
        before = len(self.messages)
        obs, reward, terminated, truncated, info = self.env.step(render_tool_calls([ToolCall(name, arguments)]))
        self.messages = obs
        self.tool_calls += 1
        self.totals["tool_calls"] += 1
        replies = [m["content"] for m in obs[before + 1:] if m["role"] == "tool"]
        if terminated or truncated:
            self._record(float(reward), info, terminated, truncated)
        return "\n".join(replies)

    def _finish(self, text: str) -> float:
        """Send ``text`` as the final answer and return the env's reward (0.0 if the episode is already over or
        ``text`` still holds tool calls: the rollout ended without a final answer)."""
        from amrsd_envs.toolcalls import parse_tool_calls

        if self.done:
            return 0.0
        parsed = parse_tool_calls(text)
        if parsed.calls or parsed.errors:
            self._record(0.0, {}, False, True)
            return 0.0
        obs, reward, terminated, truncated, info = self.env.step(text)
        self.messages = obs
        self._record(float(reward), info, terminated, truncated)
        return float(reward)

    def _abandon(self) -> float:
        """The rollout ended on a tool call (TRL's iteration or length limit): no final answer, reward 0.0."""
        if not self.done:
            self._record(0.0, {}, False, True)
        return 0.0

    def _record(self, reward: float, info: dict[str, Any], terminated: bool, truncated: bool) -> None:
        verification = info.get("verification")
        self.done = True
        self.episodes.append({
            "task_id": self.task_id, "reward": reward, "correct": bool(info.get("correct", False)),
            "tool_calls": self.tool_calls, "terminated": terminated, "truncated": truncated,
            "extracted": getattr(verification, "extracted", None), "verified": verification is not None,
        })
        self.totals["episodes"] += 1
        self.totals["verified"] += verification is not None
        self.totals["correct"] += bool(info.get("correct", False))

    def __del__(self) -> None:
        try:
            self.env.close()
        except Exception:
            pass


def _family_tools(env_id: str, families: list[str] | None, env_kwargs: dict[str, Any]) -> tuple[Any, list[str]]:
    """The env's catalog (loaded once, shared by every instance) and the union of its families' tools."""
    import gymnasium as gym

    import amrsd_envs  # noqa: F401

    probe = gym.make(env_id, families=families, **env_kwargs)
    catalog = probe.unwrapped.catalog
    probe.close()
    names: list[str] = []
    for family in catalog:
        for name in family.spec.tools:
            if name not in names:
                names.append(name)
    return catalog, names


def make_environment_factory(env_id: str = "AMRSD-ToolUse-v0", families: list[str] | None = None, *,
                             seed: int = 0, class_name: str = "AMRSDToolEnv",
                             **env_kwargs: Any) -> type[AMRSDToolEnvironment]:
    """A class to pass as TRL's ``environment_factory``: ``cls()`` makes one environment instance.

    Args:
        env_id: a registered env id (``AMRSD-ToolUse-v0``, ``AMRSD-Math-v0``, ...).
        families: family ids or glob patterns, as for ``gym.make(env_id, families=...)``.
        seed: seeds for the env's own task sampling (used only by rows without ``task_id``): instance ``k`` of the
            class is seeded ``seed + k`` on its first reset.
        class_name: the class's name.
        **env_kwargs: more ``gym.make`` arguments (``max_turns``, ``difficulty``, ``tasks``, ``sandbox``,
            ``sandbox_backend``, ...). The task catalog is loaded once, here, and shared by every instance (the
            class's ``catalog``; ``make_dataset(..., tasks=cls.catalog)`` skips loading it again).

    Returns:
        A subclass of :class:`AMRSDToolEnvironment` with one public method per tool of the selected families (named
        after the tool; arguments as keywords; returns the env's tool message), plus ``reset``.
    """
    catalog, names = _family_tools(env_id, families, env_kwargs)
    kwargs = {k: v for k, v in env_kwargs.items() if k not in ("tasks", "difficulty")}
    kwargs.update(tasks=catalog, families=families)  # the catalog already has the difficulty applied
    namespace: dict[str, Any] = {name: tool_method(name) for name in names}
    for reserved in ("reset", "get_reward"):
        if reserved in namespace:
            raise ValueError(f"a tool named {reserved!r} would clash with TRL's environment protocol")
    namespace.update(
        env_id=env_id, families=tuple(families) if families is not None else None, tool_names=tuple(names),
        catalog=catalog,
        _env_kwargs=kwargs, _seeds=itertools.count(seed), __module__=__name__,
        __doc__=f"One {env_id} episode at a time (families={families}), for TRL's environment_factory; "
                f"tools: {', '.join(names) or '(none)'}.",
    )
    return type(class_name, (AMRSDToolEnvironment,), namespace)


# -- reward --------------------------------------------------------------------------------------------------------


def amrsd_reward(completions: list[Any], environments: list[Any] | None = None, **kwargs: Any) -> list[float | None]:
    """TRL reward function: each rollout's final assistant message, verified by its env.

    Returns the env's reward per rollout (see the module docstring); ``None`` for rollouts whose environment is not
    an :class:`AMRSDToolEnvironment` (TRL then ignores this function for them).
    """
    if environments is None:
        raise ValueError("amrsd_reward needs TRL's `environments` (pass environment_factory= to GRPOTrainer)")
    rewards: list[float | None] = []
    for completion, env in zip(completions, environments, strict=True):
        if not isinstance(env, AMRSDToolEnvironment):
            rewards.append(None)
            continue
        if isinstance(completion, str):
            rewards.append(env._finish(completion))
            continue
        last = completion[-1] if completion else None
        if not last or last.get("role") != "assistant" or last.get("tool_calls"):
            rewards.append(env._abandon())
            continue
        content = last.get("content") or ""
        if not isinstance(content, str):  # content parts
            content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        rewards.append(env._finish(content))
    return rewards


# -- dataset -------------------------------------------------------------------------------------------------------


def task_rows(env_id: str = "AMRSD-ToolUse-v0", families: list[str] | None = None, *, split: str = "train",
              n: int | None = 1000, **env_kwargs: Any) -> list[dict[str, Any]]:
    """``[{"prompt": [system, user], "task_id": ...}, ...]``: ``n`` tasks of ``split`` (``None``: every one; a
    task takes a few milliseconds to generate), the first instances of each family round-robin
    (``env.task_ids``), each prompt exactly as ``env.reset`` gives it for that task."""
    import gymnasium as gym

    import amrsd_envs  # noqa: F401

    env = gym.make(env_id, families=families, **env_kwargs)
    try:
        base = env.unwrapped
        if n is None:
            n = sum(sum(1 for _ in family.indices(split)) for family in base.catalog)
        return [{"prompt": base.catalog.get(task_id).messages(), "task_id": task_id}
                for task_id in base.task_ids(split, n)]
    finally:
        env.close()


def make_dataset(env_id: str = "AMRSD-ToolUse-v0", families: list[str] | None = None, *, split: str = "train",
                 n: int | None = 1000, **env_kwargs: Any) -> Any:
    """:func:`task_rows` as a ``datasets.Dataset`` (columns ``prompt``, ``task_id``) for ``GRPOTrainer``."""
    from datasets import Dataset

    return Dataset.from_list(task_rows(env_id, families, split=split, n=n, **env_kwargs))


# -- tokenizer -----------------------------------------------------------------------------------------------------


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Give a tokenizer whose chat template writes Hermes ``<tool_call>`` blocks (the project's
    ``hermes_tools.jinja``) the response template TRL needs to parse tool calls, when it has none. Other
    tokenizers are returned unchanged (TRL recognises the common templates itself). Returns the tokenizer."""
    if getattr(tokenizer, "response_template", None) is not None or getattr(tokenizer, "response_schema", None):
        return tokenizer
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    if "<tool_call>" in template and "<|im_start|>assistant" in template:
        tokenizer.response_template = HERMES_RESPONSE_TEMPLATE
    return tokenizer


def stop_after_tool_calls(model: Any, tokenizer: Any) -> Any:
    """Make ``</tool_call>`` end a generation, as the project's own rollouts do (they stop on that string).

    TRL stops a turn only at the ids in ``model.generation_config.eos_token_id`` (plus the tokenizer's EOS). A model
    trained by this project's rollouts never learned to write ``<|im_end|>`` after a tool call, so under TRL it
    would run on to ``max_completion_length``. When ``</tool_call>`` is one token (the embedded models), it is added
    to those ids; otherwise nothing changes. Returns the model."""
    close = tokenizer.convert_tokens_to_ids("</tool_call>")
    if not isinstance(close, int) or close < 0 or close == getattr(tokenizer, "unk_token_id", None):
        return model
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if close not in eos:
        model.generation_config.eos_token_id = [*eos, close]
    return model
