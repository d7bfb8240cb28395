"""BFCL v4 multi-turn (``multi_turn_base``): the episode's world, BFCL's per-turn check and the oracle.

**World.** A task names the backend classes it involves (``GorillaFileSystem``, ``TradingBot``, ``TravelAPI``,
``VehicleControlAPI``, ``MessageAPI``, ``TwitterAPI``, ``TicketAPI``, ``MathAPI``) and an initial configuration for
each. At reset the world instantiates them from the installed ``bfcl-eval`` package's backends (the benchmark's
world; nothing of its checker is imported) and loads the configuration as BFCL does (``_load_scenario`` on a deep
copy; ``MathAPI`` is stateless). The agent's Hermes calls run as method calls on those instances: the arguments are
the call's JSON object, passed as keywords, never evaluated text. Only the functions shown to the agent (the
function docs of the involved classes) can be called; when two classes share a method name, the later class in
``involved_classes`` wins, as in BFCL. A result is written as BFCL writes it (a string as is, a dict as JSON,
anything else with ``str``), an exception as ``Error during execution: <message>``; nothing raises out of a call.

**Check of one user turn** (BFCL's ``multi_turn_checker``), when the agent ends the turn with a message without
calls. A second set of instances (the *reference*) runs the turn's ground-truth calls, turn after turn, from the
same initial configuration. A turn whose ground truth is empty is not checked. Otherwise it passes when

1. the agent made at least one well-formed call in the turn (BFCL: ``empty_turn_model_response``);
2. every public attribute (no leading ``_``) of every reference instance equals the agent's instance's
   (``instance_state_mismatch``);
3. every result of the turn's ground-truth calls is among the results of all the agent's calls so far, counted
   with multiplicity, in any order (``execution_response_mismatch``).

The episode is correct when every turn passes (BFCL's multi-turn accuracy). Feedback names the turn and the check
that failed (and the class or attribute), never an expected value.

The verifier kind ``bfcl_multi_turn`` (:mod:`amrsd_envs.verifiers.bfcl_multi_turn`) makes this world at reset and
reads its verdicts at the end.

**Oracle.** Per turn, one message with the ground-truth calls in order (positional arguments named from the
backend method's signature), then a short message without calls; a turn with empty ground truth gets a reply only.

One divergence from BFCL, by design: BFCL evaluates a call string, so any public method of an involved instance can
be reached; here only the documented functions can be called (others are an unknown function).
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

BACKEND_PACKAGE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"

BACKENDS: dict[str, tuple[str, str]] = {
    "GorillaFileSystem": ("gorilla_file_system", "gorilla_file_system.json"),
    "MathAPI": ("math_api", "math_api.json"),
    "MessageAPI": ("message_api", "message_api.json"),
    "TwitterAPI": ("posting_api", "posting_api.json"),
    "TicketAPI": ("ticket_api", "ticket_api.json"),
    "TradingBot": ("trading_bot", "trading_bot.json"),
    "TravelAPI": ("travel_booking", "travel_booking.json"),
    "VehicleControlAPI": ("vehicle_control", "vehicle_control.json"),
}
"""Backend class -> (module under :data:`BACKEND_PACKAGE`, function-doc file under ``data/multi_turn_func_doc``)."""

STATELESS = frozenset({"MathAPI"})
"""Classes with no scenario to load (BFCL's ``STATELESS_CLASSES``)."""

ERROR_PREFIX = "Error during execution: "
TURN_DONE = "Done."

CALLS_PER_MESSAGE = 8
"""Calls run for one assistant message (BFCL's ground truth makes at most 7 in a turn); the rest, and parse errors
past this many tool messages, are summed up in one notice, as the tool executor bounds a flood of calls."""

TOOL_MESSAGES_PER_EPISODE = 120
"""Tool messages an episode may receive; after that each message with calls gets one notice. With ``max_turns`` 40
this keeps the transcript inside the observation space (256 messages) whatever the agent sends."""


# ----------------------------------------------------------------------------------------------------------------
# gold and ground-truth calls


def parse_gold(gold: str) -> dict[str, Any]:
    """The task's gold: ``involved_classes``, ``initial_config``, ``turns`` (the user messages of each turn) and
    ``ground_truth`` (each turn's call strings). Raises ValueError for a gold of another shape."""
    try:
        data = json.loads(gold)
    except ValueError as exc:
        raise ValueError(f"bfcl_multi_turn: the gold must be JSON ({exc})") from None
    keys = {"involved_classes", "initial_config", "turns", "ground_truth"}
    if not isinstance(data, dict) or set(data) != keys:
        raise ValueError(f"bfcl_multi_turn: the gold must be a JSON object with keys {sorted(keys)}")
    if len(data["turns"]) != len(data["ground_truth"]):
        raise ValueError("bfcl_multi_turn: `turns` and `ground_truth` must have one entry per user turn")
    unknown = [c for c in data["involved_classes"] if c not in BACKENDS]
    if unknown:
        raise ValueError(f"bfcl_multi_turn: unknown backend class(es) {unknown}; known: {', '.join(BACKENDS)}")
    return data


def parse_call(text: str) -> tuple[str, list[Any], dict[str, Any]]:
    """A ground-truth call string such as ``"mv(source='a.txt', destination='tmp')"`` as (name, positional
    arguments, keyword arguments), read with :mod:`ast` (literals only, nothing is evaluated)."""
    node = ast.parse(text.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain function call: {text!r}")
    args = [ast.literal_eval(a) for a in node.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
    if len(kwargs) != len(node.keywords):
        raise ValueError(f"**kwargs in a call: {text!r}")
    return node.func.id, args, kwargs


def backend_class(name: str) -> type:
    module, _ = BACKENDS[name]
    return getattr(importlib.import_module(f"{BACKEND_PACKAGE}.{module}"), name)


def function_docs(class_name: str) -> list[dict[str, Any]]:
    """The BFCL function docs of one backend class, in the package's order."""
    from amrsd_envs.datasets.bfcl import _read_lines

    return _read_lines(f"multi_turn_func_doc/{BACKENDS[class_name][1]}")


def documented_names(classes: list[str]) -> dict[str, str]:
    """Function name -> the class that serves it (the later class wins a shared name, as in BFCL)."""
    owner: dict[str, str] = {}
    for cls in classes:
        for doc in function_docs(cls):
            owner[doc["name"]] = cls
    return owner


def keyword_arguments(cls: type, name: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``args`` and ``kwargs`` of a call of ``cls.name`` as keywords only (named by the method's signature)."""
    params = [p for p in inspect.signature(getattr(cls, name)).parameters if p != "self"]
    if len(args) > len(params):
        raise ValueError(f"{name} takes {len(params)} arguments, got {len(args)} positional")
    return {**dict(zip(params, args)), **kwargs}


# ----------------------------------------------------------------------------------------------------------------
# the backends


def load_instances(classes: list[str], initial_config: dict[str, Any]) -> dict[str, Any]:
    """Fresh instances of ``classes`` with their scenario loaded, as BFCL's ``execute_multi_turn_func_call`` does."""
    instances = {}
    for name in classes:
        instance = backend_class(name)()
        if name not in STATELESS:
            instance._load_scenario(copy.deepcopy(initial_config.get(name, {})), long_context=False)
        instances[name] = instance
    return instances


def result_text(value: Any) -> str:
    """A call's result as BFCL records it: a str as is, a dict as JSON (``str`` if it is not JSON), else ``str``."""
    if type(value) is str:
        return value
    if type(value) is dict:
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def run_call(instances: dict[str, Any], owner: dict[str, str], name: str, args: list[Any],
             kwargs: dict[str, Any]) -> str:
    """Run one call on its instance; any exception (unknown function, bad arguments, a backend error) becomes
    BFCL's error text."""
    try:
        if name not in owner:
            raise NameError(f"name '{name}' is not defined")
        return result_text(getattr(instances[owner[name]], name)(*args, **kwargs))
    except Exception as exc:  # the backend's own errors are part of the benchmark's answers
        return f"{ERROR_PREFIX}{exc}"


def public_state(instance: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(instance).items() if not k.startswith("_")}


_MISSING = object()


# ----------------------------------------------------------------------------------------------------------------
# the episode's world


@dataclass(frozen=True)
class TurnVerdict:
    """The check of one user turn: ``passed``, and ``feedback`` naming the check that failed (never a gold value)."""

    turn: int
    passed: bool
    feedback: str = "correct"


@dataclass
class MultiTurnWorld:
    """One episode of a BFCL multi-turn task: the agent's backend instances, the reference instances that run the
    ground truth, and the verdict of each finished user turn. The env calls :meth:`execute` for a message with
    calls and :meth:`end_turn` for one without (which returns the next user message, or None after the last)."""

    gold: dict[str, Any]
    turn: int = 0
    verdicts: list[TurnVerdict] = field(default_factory=list)
    instances: dict[str, Any] = field(init=False)
    reference: dict[str, Any] = field(init=False)
    owner: dict[str, str] = field(init=False)
    results: list[str] = field(init=False, default_factory=list)  # of every call of the agent, all turns
    calls_this_turn: int = field(init=False, default=0)
    tool_messages: int = field(init=False, default=0)  # sent this episode, notices included

    def __post_init__(self) -> None:
        classes, config = self.gold["involved_classes"], self.gold["initial_config"]
        self.instances = load_instances(classes, config)
        self.reference = load_instances(classes, config)
        self.owner = documented_names(classes)

    @property
    def n_turns(self) -> int:
        return len(self.gold["turns"])

    def execute(self, parsed: Any) -> list[dict[str, Any]]:
        """Tool messages for the calls (in order) and the parse errors of one assistant message: at most
        :data:`CALLS_PER_MESSAGE`, then one notice for the rest; one notice only once the episode's
        :data:`TOOL_MESSAGES_PER_EPISODE` are used up."""
        from amrsd_envs.tools.context import ToolContext
        from amrsd_envs.tools.executor import LIMIT_NOTICE_TOOL_NAME, PARSE_ERROR_TOOL_NAME, tool_message

        def message(name: str, content: str) -> dict[str, Any]:
            # the transcript gets the executor's bounded, valid-Unicode form; the checks keep the raw results
            return tool_message(name, content, ToolContext.output_limit_chars)

        if self.tool_messages >= TOOL_MESSAGES_PER_EPISODE:
            self.tool_messages += 1
            return [message(LIMIT_NOTICE_TOOL_NAME, f"error: not run: the episode's {TOOL_MESSAGES_PER_EPISODE} "
                                                    "tool messages are used up; end the turn with a message without "
                                                    "calls")]
        messages = []
        for call in parsed.calls[:CALLS_PER_MESSAGE]:
            self.calls_this_turn += 1
            result = run_call(self.instances, self.owner, call.name, [], dict(call.arguments))
            self.results.append(result)
            messages.append(message(call.name, result))
        room = max(0, CALLS_PER_MESSAGE - len(messages))
        for error in parsed.errors[:room]:
            messages.append(message(PARSE_ERROR_TOOL_NAME, f"error: {error}"))
        more_calls = max(0, len(parsed.calls) - CALLS_PER_MESSAGE)
        more_errors = len(parsed.errors) - min(len(parsed.errors), room)
        if more_calls or more_errors:
            parts = [f"{n} more {what}" for n, what in ((more_calls, "tool call(s)"),
                                                         (more_errors, "malformed <tool_call> block(s)")) if n]
            messages.append(message(LIMIT_NOTICE_TOOL_NAME, f"error: not run or reported: {' and '.join(parts)} in "
                                                            f"this message; at most {CALLS_PER_MESSAGE} calls are run "
                                                            "per message"))
        self.tool_messages += len(messages)
        return messages

    def end_turn(self, text: str = "") -> str | None:
        """Check the turn that just ended; the next user turn's message, or None when it was the last."""
        self.verdicts.append(self._check_turn())
        self.turn += 1
        self.calls_this_turn = 0
        if self.turn >= self.n_turns:
            return None
        return user_text(self.gold["turns"][self.turn])

    def close(self) -> None:
        self.instances, self.reference = {}, {}

    def _check_turn(self) -> TurnVerdict:
        k = self.turn
        calls = [parse_call(c) for c in self.gold["ground_truth"][k]]
        expected = [run_call(self.reference, self.owner, n, a, kw) for n, a, kw in calls]
        if not calls:
            return TurnVerdict(k, True)  # a turn the functions cannot serve: BFCL does not check it
        if self.calls_this_turn == 0:
            return TurnVerdict(k, False, f"user turn {k + 1}: no function was called, but the request needed calls")
        for name, ref in self.reference.items():
            mine = self.instances[name]
            for attr, value in public_state(ref).items():
                if getattr(mine, attr, _MISSING) != value:
                    return TurnVerdict(k, False, f"user turn {k + 1}: the state of {name} ({attr}) is not what the "
                                                 "request asked for")
        pool = list(self.results)
        for item in expected:
            if item not in pool:
                return TurnVerdict(k, False, f"user turn {k + 1}: a result the request needed was never produced "
                                             "by a call")
            pool.remove(item)
        return TurnVerdict(k, True)


def user_text(messages: list[dict[str, str]]) -> str:
    """One user turn (a list of chat messages) as one user message."""
    return "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))


def oracle_messages(gold: str) -> list[str]:
    """Per user turn: the ground-truth calls in one message, then a reply without calls."""
    from amrsd_envs.toolcalls import ToolCall, render_tool_calls

    data = parse_gold(gold)
    owner = documented_names(data["involved_classes"])
    out = []
    for turn in data["ground_truth"]:
        calls = []
        for text in turn:
            name, args, kwargs = parse_call(text)
            arguments = keyword_arguments(backend_class(owner[name]), name, args, kwargs)
            calls.append(ToolCall(name=name, arguments=arguments))
        if calls:
            out.append(render_tool_calls(calls))
        out.append(TURN_DONE)
    return out
