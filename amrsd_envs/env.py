"""The multi-turn text environment behind ``AMRSD-Math-v0``, ``AMRSD-Science-v0`` and ``AMRSD-ToolUse-v0``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym

from amrsd_envs.catalog import Split, TaskCatalog, TaskInstance, load_tasks
from amrsd_envs.peers import PeerBuffer
from amrsd_envs.spaces import Conversation, Utterance, copy_messages
from amrsd_envs.verifiers import VERIFIERS, Verification, check


RESET_OPTIONS = frozenset({"task_id", "family", "split", "record_peer", "peer_step"})


class AMRSDEnv(gym.Env[list, str]):
    """A multi-turn agentic task: the agent answers (and may call tools) until it gives a final answer.

    One class serves every domain; domains differ only by their task families and tools.

    ## Observation
    ``Conversation``: the whole transcript so far, a list of OpenAI-style messages
    ``{"role": "system"|"user"|"assistant"|"tool", "content": str}`` (tool messages also carry ``"name"``).
    After ``reset`` it is ``[system, user]``; each ``step`` appends the agent's message and any tool results.

    ## Action
    ``Utterance``: one assistant message as text. Tool calls are written in it in the Hermes/Qwen format
    ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (several allowed). A message with no tool call is
    the final answer (math/science: ``\\boxed{...}``).

    ## Rewards
    | outcome                                   | reward                        |
    |-------------------------------------------|-------------------------------|
    | final answer verified correct             | 1.0                           |
    | final answer wrong                        | 0.0                           |
    | no answer could be extracted              | 0.0 - family `format_penalty` |
    | a turn with tool calls (episode goes on)  | 0.0                           |
    | truncated at `max_turns`                  | 0.0                           |

    ## Episode end
    *Terminated* when the agent sends a message without tool calls (its final answer is verified).
    *Truncated* when ``max_turns`` assistant messages were sent without a final answer. A malformed tool call is
    not an error: it yields a ``role: tool`` message with the error text, and the episode goes on.

    ## Info
    ``reset``: ``task_id``, ``family``, ``split``, ``tools`` (OpenAI function schemas for
    ``tokenizer.apply_chat_template(messages, tools=info["tools"])``), ``max_turns``.
    ``step``: ``turn``, ``tool_calls`` (count this turn), and at the end ``verification``
    (:class:`~amrsd_envs.verifiers.Verification`: correct, score, extracted, feedback — never the gold).

    ## Arguments
    ``domain``: ``"math" | "science" | "tooluse" | None`` (None: all families).
    ``tasks``: a tasks directory or file (default: the built-in ``tasks/``), or a loaded ``TaskCatalog``.
    ``families``: family ids or glob patterns to keep, e.g. ``["math.fraction_sum", "math.lin*"]``.
    ``split``: ``"train"`` (default) or ``"test"``: which instances ``reset`` samples from.
    ``difficulty``: the difficulty level for every family (clamped to each family's levels).
    ``max_turns``: override every family's ``max_turns``.
    ``peer_buffer``: a :class:`~amrsd_envs.peers.PeerBuffer` that receives every finished episode.
    ``sandbox_backend``: ``"local"`` or ``"docker"`` for the ``python`` tool; ``sandbox_options`` go to
    ``make_sandbox``. The env starts its sandbox on the first Python call and closes it in ``close()``.
    ``sandbox``: a sandbox owned by the caller instead, e.g. one :class:`~amrsd_envs.sandbox.SharedSandbox` for all
    of a trainer's envs; the env uses it and never closes it.

    ```python
    import gymnasium as gym, amrsd_envs
    env = gym.make("AMRSD-Math-v0", families=["math.fraction_sum"])
    messages, info = env.reset(seed=0)
    messages, reward, terminated, truncated, info = env.step("... so the answer is \\\\boxed{3/4}")
    ```
    ``reset(seed, options={"task_id": ..., "family": ..., "split": ...})`` picks a task: a given ``task_id``
    wins, else a random instance (of ``family`` if given) from the split, drawn with ``self.np_random``.
    Two more options concern the ``peer_buffer``: ``record_peer`` (default True; False keeps this episode out of
    it, e.g. held-out evaluation) and ``peer_step`` (the training step recorded with the episode; default the
    constructor's ``peer_step``).

    ## Version history
    * v0: initial release.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        domain: str | None = None,
        tasks: str | Path | TaskCatalog | None = None,
        families: list[str] | None = None,
        split: Split = "train",
        difficulty: int | None = None,
        max_turns: int | None = None,
        peer_buffer: PeerBuffer | None = None,
        sandbox_backend: str = "local",
        sandbox_options: dict[str, Any] | None = None,
        sandbox: Any = None,
        render_mode: str | None = None,
        peer_step: int = 0,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if isinstance(tasks, TaskCatalog):
            catalog = tasks.select(domain=domain, families=families) if (domain or families) else tasks
        else:
            catalog = load_tasks(tasks, domain=domain, families=families, difficulty=difficulty)
        if len(catalog) == 0:
            raise ValueError(f"no task families for domain={domain!r}, families={families!r}")
        self.catalog = catalog
        self.domain = domain
        self.split: Split = split
        self.max_turns_override = max_turns
        self.peer_buffer = peer_buffer
        self.peer_step = peer_step
        self.sandbox_backend = sandbox_backend
        self.sandbox_options = dict(sandbox_options or {})
        self.render_mode = render_mode
        self.observation_space = Conversation()
        self.action_space = Utterance()
        self._family_ids = sorted(f.id for f in catalog)
        self._task: TaskInstance | None = None
        self._messages: list[dict[str, Any]] = []
        self._turn = 0
        self._done = True
        self._tool_session: Any = None  # per-episode tool resources (amrsd_envs.tools.ToolSession)
        self._sandbox: Any = None  # shared across episodes: starting one is the expensive part
        self._external_sandbox = sandbox  # the caller's: used, never closed here
        self._record_peer, self._episode_peer_step = True, peer_step

    # -- gym API ------------------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list, dict]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - RESET_OPTIONS
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; valid: {', '.join(sorted(RESET_OPTIONS))}")
        record = options.get("record_peer", True)
        if not isinstance(record, bool):
            raise TypeError(f"reset option record_peer must be a bool, got {record!r}")
        peer_step = options.get("peer_step", self.peer_step)
        if isinstance(peer_step, bool) or not isinstance(peer_step, int):
            raise TypeError(f"reset option peer_step must be an int, got {peer_step!r}")
        self._record_peer, self._episode_peer_step = record, peer_step
        self._close_episode()
        split = options.get("split", self.split)
        if "task_id" in options:
            task = self.catalog.get(options["task_id"])
        else:
            task = self._sample_task(split, options.get("family"))
        self._task = task
        self._messages = task.messages()
        self._turn = 0
        self._done = False
        return copy_messages(self._messages), {
            "task_id": task.id,
            "family": task.family_id,
            "split": task.split,
            "tools": self._tool_schemas(task),
            "max_turns": self._max_turns(task),
        }

    def step(self, action: str) -> tuple[list, SupportsFloat, bool, bool, dict]:
        if self._done or self._task is None:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        if not isinstance(action, str):
            raise TypeError(f"action must be the assistant message text (str), got {type(action).__name__}")
        task = self._task
        self._turn += 1
        self._messages.append({"role": "assistant", "content": action})
        info: dict[str, Any] = {"task_id": task.id, "turn": self._turn, "tool_calls": 0}

        tool_messages = self._run_tools(task, action)
        if tool_messages:
            self._messages.extend(tool_messages)
            info["tool_calls"] = len(tool_messages)
            if self._turn >= self._max_turns(task):
                return self._finish(info, reward=0.0, terminated=False, truncated=True, verification=None)
            return copy_messages(self._messages), 0.0, False, False, info

        verification = self._verify(task, action)
        reward = verification.score
        if verification.extracted is None:
            reward -= task.format_penalty
        return self._finish(info, reward=reward, terminated=True, truncated=False, verification=verification)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        lines = []
        for m in self._messages:
            lines.append(f"[{m['role']}{'/' + m['name'] if m.get('name') else ''}] {m['content']}")
        return "\n".join(lines)

    def close(self) -> None:
        self._close_episode()
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
        super().close()

    # -- helpers for evaluators and trainers --------------------------------------------------------------------

    @property
    def task(self) -> TaskInstance | None:
        """The current task instance (holds the gold answer: for graders and trainers, not for policies)."""
        return self._task

    def task_ids(self, split: Split, n: int, *, families: list[str] | None = None) -> list[str]:
        """A deterministic list of ``n`` task ids of ``split``: the first instances of each family, round-robin."""
        fam_ids = families or self._family_ids
        iters = {f: self.catalog[f].indices(split) for f in fam_ids}
        out: list[str] = []
        while len(out) < n and iters:
            for f in list(iters):
                idx = next(iters[f], None)
                if idx is None:
                    del iters[f]
                    continue
                out.append(self.catalog[f].instance(idx).id)
                if len(out) == n:
                    break
        return out

    # -- internals ----------------------------------------------------------------------------------------------

    def _max_turns(self, task: TaskInstance) -> int:
        return self.max_turns_override or task.max_turns

    def _sample_task(self, split: Split, family: str | None) -> TaskInstance:
        fam_ids = [family] if family is not None else self._family_ids
        if family is not None and family not in self.catalog.families:
            self.catalog[family]  # raises KeyError with suggestions
        for _ in range(10_000):
            fam = self.catalog[fam_ids[int(self.np_random.integers(len(fam_ids)))]]
            index = int(self.np_random.integers(len(fam)))
            if fam.split_of(index) == split:
                return fam.instance(index)
        raise ValueError(f"no {split!r} instances found in families {fam_ids}; check the families' split settings")

    def _tool_schemas(self, task: TaskInstance) -> list[dict[str, Any]]:
        if not task.tools:
            return []
        from amrsd_envs.tools import get_tool

        return [get_tool(name).schema() for name in task.tools]

    def _run_tools(self, task: TaskInstance, text: str) -> list[dict[str, Any]]:
        """Tool messages answering the calls in ``text`` (empty when it has none: then it is the final answer)."""
        from amrsd_envs.toolcalls import parse_tool_calls

        parsed = parse_tool_calls(text)
        if not parsed.calls and not parsed.errors:
            return []
        return self._tools(task).execute(parsed)

    def _tools(self, task: TaskInstance) -> Any:
        if self._tool_session is None:
            from amrsd_envs.tools import ToolSession

            self._tool_session = ToolSession.for_task(task, sandbox_factory=self._get_sandbox)
        return self._tool_session

    def _get_sandbox(self) -> Any:
        if self._external_sandbox is not None:
            return self._external_sandbox
        if self._sandbox is None:
            from amrsd_envs.sandbox import make_sandbox

            self._sandbox = make_sandbox(self.sandbox_backend, **self.sandbox_options)
        return self._sandbox

    def _verify(self, task: TaskInstance, text: str) -> Verification:
        options = dict(task.verifier_options)
        # Only kinds that declare a `world` option (world_state) get the world; `math` & co. reject unknown options.
        if "world" in VERIFIERS[task.verifier].options_model.model_fields and task.world is not None:
            options["world"] = self._tools(task).world  # a fresh world when the agent never called a tool
        return check(task.verifier, task.answer, text, **options)

    def _finish(
        self, info: dict[str, Any], *, reward: float, terminated: bool, truncated: bool, verification: Verification | None
    ) -> tuple[list, float, bool, bool, dict]:
        task = self._task
        assert task is not None
        self._done = True
        info["verification"] = verification
        info["correct"] = bool(verification.correct) if verification is not None else False
        if self.peer_buffer is not None and self._record_peer:
            self.peer_buffer.record(
                task.id,
                answer=verification.extracted if verification is not None else None,
                correct=info["correct"],
                transcript=_transcript(self._messages),
                step=self._episode_peer_step,
            )
        self._close_episode()
        return copy_messages(self._messages), float(reward), terminated, truncated, info

    def _close_episode(self) -> None:
        if self._tool_session is not None:
            self._tool_session.close()
            self._tool_session = None


def _transcript(messages: list[dict[str, Any]]) -> str:
    """The agent's side of an episode (assistant and tool turns), for peers."""
    parts = []
    for m in messages:
        if m["role"] in ("assistant", "tool"):
            parts.append(f"{m['role']}: {m['content']}")
    return "\n".join(parts)
