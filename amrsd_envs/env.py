"""The multi-turn text environment behind ``AMRSD-Math-v0``, ``AMRSD-Science-v0``, ``AMRSD-ToolUse-v0`` and
``AMRSD-BFCL-v0``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym

from amrsd_envs.catalog import Split, TaskCatalog, TaskInstance, TaskSampler, load_tasks
from amrsd_envs.peers import PeerBuffer
from amrsd_envs.spaces import Conversation, Utterance, copy_messages
from amrsd_envs.verifiers import VERIFIERS, Verification, check


TOOL_TURNS = 3
"""With ``tools=`` given (and no ``max_turns``), each attempt gets this many tool turns before its final answer."""


def retry_message(verification: Verification, *, calls: bool = False) -> str:
    """The user's reply to a wrong final answer in feedback-retry mode: the verifier's sanitized feedback.
    ``calls``: the answer is function calls (a function-calling family), not a boxed value."""
    feedback = (verification.feedback or "").strip().rstrip(".")
    said = f" ({feedback})" if feedback else ""
    again = "answer again" if calls else "give the final answer again as \\boxed{...}"
    return f"That is not correct{said}. Check your work and {again}."


RESET_OPTIONS = frozenset({"task_id", "family", "split", "record_peer", "peer_step"})


class AMRSDEnv(gym.Env[list, str]):
    """A multi-turn agentic task: the agent answers (and may call tools) until it gives a final answer.

    One class serves every domain; domains differ only by their task families and tools. ``AMRSD-BFCL-v0`` (domain
    ``function_calling``) serves the BFCL families (``bfcl.*``): there the task brings its own functions; in the
    single-turn categories the first message is the answer, in ``bfcl.multi_turn_base`` the user's turns are scripted
    (see *Function calling* and *Scripted user turns* below).

    ## Observation
    ``Conversation``: the whole transcript so far, a list of OpenAI-style messages
    ``{"role": "system"|"user"|"assistant"|"tool", "content": str}`` (tool messages also carry ``"name"``).
    After ``reset`` it is ``[system, user]``; each ``step`` appends the agent's message and any tool results.

    ## Action
    ``Utterance``: one assistant message as text. Tool calls are written in it in the Hermes/Qwen format
    ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (several allowed). A message with no tool call is
    the final answer (math/science: ``\\boxed{...}``).

    ## Function calling (``AMRSD-BFCL-v0``)
    A family with a ``function_calling:`` block (the BFCL families ``bfcl.simple``, ``bfcl.multiple``,
    ``bfcl.parallel``, ``bfcl.parallel_multiple``, ``bfcl.live_simple``, ``bfcl.live_multiple``,
    ``bfcl.irrelevance``, and ``bfcl.multi_turn_base`` below) gives each task its own functions: ``info["tools"]``
    holds that task's OpenAI function schemas (BFCL's types written as JSON-schema types). In the single-turn
    families the agent's first message is its answer, calls or not:
    its ``<tool_call>`` blocks are graded as they are (``bfcl_ast``: BFCL's AST match, several calls in any order
    for the parallel categories) and nothing is executed, so no ``role: tool`` message ever comes back. For
    ``bfcl.irrelevance`` no function fits and the right answer is a message without calls. The env's ``tools=``
    option does not apply to these families.

    ```python
    import gymnasium as gym, amrsd_envs
    env = gym.make("AMRSD-BFCL-v0", families=["bfcl.simple"])
    messages, info = env.reset(options={"task_id": "bfcl.simple/simple_python_1"})
    info["tools"][0]["function"]["name"]                # 'math.factorial'
    call = '<tool_call>\\n{"name": "math.factorial", "arguments": {"number": 5}}\\n</tool_call>'
    messages, reward, terminated, truncated, info = env.step(call)   # reward 1.0, terminated
    assert reward == 1.0 and terminated
    ```

    ## Scripted user turns (``bfcl.multi_turn_base``)
    A verifier kind may bring an episode world (``episode_world(gold)``; today ``bfcl_multi_turn``): the env makes
    it at ``reset``, the agent's calls run on it (``role: tool`` messages with the results or the error text), and
    it scripts the user's side. A message without calls ends the current *user turn*: the world checks that turn,
    and if the task has more, the next user message is appended (``info["user_turn"]``: its index) and the episode
    goes on with reward 0.0. The message that ends the last user turn is the final answer. For
    ``bfcl.multi_turn_base`` the world is BFCL's executable backends and each turn is checked as BFCL's multi-turn
    checker does (``amrsd_envs/bfcl_multi_turn.py``); ``max_turns`` (40) counts assistant messages over all user
    turns.

    ## Rewards
    | outcome                                   | reward                        |
    |-------------------------------------------|-------------------------------|
    | final answer verified correct             | 1.0                           |
    | final answer wrong                        | 0.0                           |
    | no answer could be extracted              | 0.0 - family `format_penalty` |
    | a turn with tool calls (episode goes on)  | 0.0                           |
    | truncated at `max_turns`                  | 0.0                           |
    | wrong answer with attempts left (retry)   | 0.0, and the episode goes on  |
    | correct on attempt k (k = 1, 2, ...)      | 1.0 * `retry_discount`^(k-1)  |
    | end of a user turn with more to come      | 0.0, and the next user turn   |
    | multi-turn: every user turn passed        | 1.0 (else 0.0)                |

    ## Episode end
    *Terminated* when the agent sends a message without tool calls (its final answer is verified); in a
    single-turn function-calling family, after the first message, with or without calls; with scripted user turns,
    at the message without calls that ends the last user turn.
    *Truncated* when ``max_turns`` assistant messages were sent without a final answer. In feedback-retry mode
    (``max_attempts`` > 1) a wrong final answer does not end the episode while attempts and turns are left: the env
    appends a ``role: user`` message with the verifier's sanitized feedback (never the gold) and waits for the next
    answer; the episode terminates at a correct answer or the last attempt. A malformed tool call is
    not an error: it yields a ``role: tool`` message with the error text, and the episode goes on.

    ## Errors
    ``step`` never raises because of what the action *says*: any ``str`` (empty, megabytes long, malformed or
    unknown tool calls, hostile code or SQL) becomes tool messages or a verified final answer. An action longer than
    ``action_space.max_length`` is still processed; lone surrogates (a ``str`` that is not Unicode text, e.g. bytes
    decoded with ``errors="surrogateescape"``) are replaced by U+FFFD in the transcript. It raises only:

    * ``RuntimeError`` when there is no episode to step: before the first ``reset``, after the episode ended
      (terminated or truncated) and after ``close()``. As in Gymnasium, call ``reset()`` to start the next
      episode; the finished one is not changed. (Through ``gym.make``, a step before the first reset raises
      Gymnasium's ``ResetNeeded`` from its ``OrderEnforcing`` wrapper instead.)
    * ``TypeError`` when the action is not a ``str``; the episode is unchanged and may go on.

    ``reset`` raises ``ValueError`` for an unknown option or split, ``TypeError`` for an option of the wrong type and
    ``KeyError`` (with suggestions) for an unknown ``task_id`` or ``family``. ``close()`` is idempotent; it stops the
    env's sandbox, the episode's world services and deletes its files. ``reset()`` after ``close()`` starts afresh
    (resources are made again on demand; close again to free them). The Math-Verify worker processes are shared by
    every env of the process and outlive ``close()``: ``amrsd_envs.verifiers.math_pool.shutdown_pool()`` stops them.

    ## Info
    ``reset``: ``task_id``, ``family``, ``split``, ``tools`` (OpenAI function schemas for
    ``tokenizer.apply_chat_template(messages, tools=info["tools"])``), ``max_turns``, ``max_attempts``.
    ``step``: ``turn``, ``tool_calls`` (count this turn), ``user_turn`` when a scripted user turn was appended,
    ``attempt`` after a final answer, and after each final
    answer ``verification``
    (:class:`~amrsd_envs.verifiers.Verification`: correct, score, extracted, feedback — never the gold).

    ## Arguments
    ``domain``: ``"math" | "science" | "tooluse" | "function_calling" | None`` (None: all families).
    ``tasks``: a tasks directory or file (default: the built-in ``tasks/``), or a loaded ``TaskCatalog``.
    ``families``: family ids or glob patterns to keep, e.g. ``["math.fraction_sum", "math.lin*"]``.
    ``split``: ``"train"`` (default) or ``"test"``: which instances ``reset`` samples from.
    ``difficulty``: the difficulty level for every family (clamped to each family's levels).
    ``max_turns``: override every family's ``max_turns``.
    ``tools``: tool names every family's episodes may call instead of the family's own list, e.g.
    ``["python", "calculator"]`` for math or ``["python", "calculator", "convert_units", "lookup"]`` for science
    (the built-in math and science families default to no tools: single-turn answers). Without ``max_turns``, each
    attempt then gets ``TOOL_TURNS`` (3) tool turns before its answer.
    ``max_attempts``, ``retry_discount``: feedback-retry, overriding each family's ``retry:`` block (built-in
    default 1 attempt, i.e. no retry; discount 0.5).
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
    * v0: initial release; ``AMRSD-BFCL-v0`` and function-calling families added later without changing the others;
      scripted user turns (``bfcl.multi_turn_base``) added later, without changing any other family's episodes.
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
        tools: list[str] | None = None,
        max_attempts: int | None = None,
        retry_discount: float | None = None,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if tools is not None:
            from amrsd_envs.tools import TOOLS

            if isinstance(tools, str) or not all(isinstance(t, str) for t in tools):
                raise TypeError(f"tools must be a list of tool names, got {tools!r}")
            unknown = [t for t in tools if t not in TOOLS]
            if unknown:
                raise ValueError(f"unknown tool(s) {unknown}; valid tools: {', '.join(sorted(TOOLS))}")
        if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
                                         or max_attempts < 1):
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if retry_discount is not None and not 0.0 <= retry_discount <= 1.0:
            raise ValueError(f"retry_discount must be in [0, 1], got {retry_discount!r}")
        if isinstance(tasks, TaskCatalog):
            catalog = tasks.select(domain=domain, families=families) if (domain or families) else tasks
        else:
            # answer functions of generator families run in the caller's sandbox (else one shared by the process)
            catalog = load_tasks(tasks, domain=domain, families=families, difficulty=difficulty, sandbox=sandbox)
        if len(catalog) == 0:
            raise ValueError(f"no task families for domain={domain!r}, families={families!r}")
        self.catalog = catalog
        self.domain = domain
        self.split: Split = split
        self.max_turns_override = max_turns
        self.tools_override = tuple(tools) if tools is not None else None
        self.max_attempts_override = max_attempts
        self.retry_discount_override = retry_discount
        self._attempt = 0  # final answers given so far in this episode
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
        self._world: Any = None  # a verifier kind's episode world (runs the calls, scripts the user turns)
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
        task = self._with_overrides(task)
        self._task = task
        self._world = self._episode_world(task)
        self._messages = task.messages()
        self._turn = 0
        self._attempt = 0
        self._done = False
        return copy_messages(self._messages), {
            "task_id": task.id,
            "family": task.family_id,
            "split": task.split,
            "tools": self._tool_schemas(task),  # per-task functions for a function-calling family
            "max_turns": self._max_turns(task),
            "max_attempts": task.max_attempts,
        }

    def step(self, action: str) -> tuple[list, SupportsFloat, bool, bool, dict]:
        if self._done or self._task is None:
            raise RuntimeError(
                "step() called with no episode running (finished, closed or never reset); call reset() first"
            )
        if not isinstance(action, str):
            raise TypeError(f"action must be the assistant message text (str), got {type(action).__name__}")
        from amrsd_envs.tools.executor import valid_text

        action = valid_text(action)
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

        if self._world is not None:
            follow_up = self._world.end_turn(action)  # checks the user turn that just ended
            if follow_up is not None:  # scripted user turns: the next one, and the episode goes on
                self._messages.append({"role": "user", "content": follow_up})
                info["user_turn"] = self._world.turn
                if self._turn >= self._max_turns(task):
                    return self._finish(info, reward=0.0, terminated=False, truncated=True, verification=None)
                return copy_messages(self._messages), 0.0, False, False, info

        verification = self._verify(task, action)
        self._attempt += 1
        info["attempt"] = self._attempt
        if not verification.correct and self._attempt < task.max_attempts and self._turn < self._max_turns(task):
            # feedback-retry: the sanitized verifier feedback (never the gold) as the user's reply; the episode goes on
            calls = self._function_calling(task) is not None
            self._messages.append({"role": "user", "content": retry_message(verification, calls=calls)})
            info["verification"] = verification
            return copy_messages(self._messages), 0.0, False, False, info
        reward = verification.score * task.retry_discount ** (self._attempt - 1)
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
        self._done = True  # a step after close() would make the episode's resources again, with nobody to free them
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
        """A deterministic list of ``n`` task ids of ``split``: the first instances of each family, round-robin.

        Raises ValueError naming the families when the split is empty in all of them."""
        return [t.id for t in TaskSampler(self.catalog, split, families or self._family_ids).first(n)]

    # -- internals ----------------------------------------------------------------------------------------------

    def _max_turns(self, task: TaskInstance) -> int:
        return self.max_turns_override or task.max_turns

    def _with_overrides(self, task: TaskInstance) -> TaskInstance:
        """The task with this env's ``tools`` / ``max_attempts`` / ``retry_discount`` options applied. Unless
        ``max_turns`` is given, turns grow to fit: ``TOOL_TURNS`` tool turns before each attempt when tools were
        added, and one turn per attempt."""
        changes: dict[str, Any] = {}
        if self.tools_override is not None:
            changes["tools"] = self.tools_override
        if self.max_attempts_override is not None:
            changes["max_attempts"] = self.max_attempts_override
        if self.retry_discount_override is not None:
            changes["retry_discount"] = self.retry_discount_override
        if not changes:
            return task
        attempts = changes.get("max_attempts", task.max_attempts)
        tool_turns = TOOL_TURNS if self.tools_override else 0
        changes["max_turns"] = max(task.max_turns, attempts * (1 + tool_turns))
        return dataclasses.replace(task, **changes)

    def _sample_task(self, split: Split, family: str | None) -> TaskInstance:
        # an unknown family raises KeyError with suggestions; an empty split, ValueError naming family and split
        sampler = TaskSampler(self.catalog, split, [family] if family is not None else self._family_ids)
        return sampler.draw(self.np_random)

    def _function_calling(self, task: TaskInstance) -> Any:
        """The family's ``function_calling`` spec (None for the others)."""
        return self.catalog[task.family_id].spec.function_calling

    def _tool_schemas(self, task: TaskInstance) -> list[dict[str, Any]]:
        calling = self._function_calling(task)
        if calling is not None:
            import copy

            return copy.deepcopy(list(task.params[calling.schemas]))
        if not task.tools:
            return []
        from amrsd_envs.tools import get_tool

        return [get_tool(name).schema() for name in task.tools]

    def _run_tools(self, task: TaskInstance, text: str) -> list[dict[str, Any]]:
        """Tool messages answering the calls in ``text`` (empty when it has none: then it is the final answer, or
        the end of a user turn). A single-turn function-calling family runs nothing: its calls are the answer."""
        from amrsd_envs.toolcalls import parse_tool_calls

        if self._world is None and self._function_calling(task):
            return []
        parsed = parse_tool_calls(text)
        if not parsed.calls and not parsed.errors:
            return []
        if self._world is not None:
            return self._world.execute(parsed)
        return self._tools(task).execute(parsed)

    def _episode_world(self, task: TaskInstance) -> Any:
        """The world of a verifier kind that brings its own (``episode_world(gold)``, e.g. ``bfcl_multi_turn``):
        it runs the episode's calls and scripts its user turns. None for every other kind."""
        make = getattr(VERIFIERS[task.verifier], "episode_world", None)
        return make(task.answer) if make is not None else None

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
        if "world" in VERIFIERS[task.verifier].options_model.model_fields:
            if self._world is not None:  # the verifier kind's own episode world (bfcl_multi_turn)
                options["world"] = self._world
            elif task.world is not None:
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
        if self._world is not None:
            self._world.close()
            self._world = None
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
