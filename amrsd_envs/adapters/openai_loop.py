"""Drive an AMR-SD env from a plain OpenAI-style ``messages + tools`` loop.

The env speaks text: its action is the assistant message with Hermes ``<tool_call>`` blocks, and its observation
is the transcript with ``role: tool`` results. A chat-completions API speaks structured messages: the reply's
``tool_calls`` (with ids) and, next turn, one ``role: tool`` message per call carrying its ``tool_call_id``. This
module converts between the two, so any client works:

```python
import gymnasium as gym, amrsd_envs
from amrsd_envs.adapters.openai_loop import run_episode

def chat(messages, tools):  # any function returning the reply's ``message`` object as a dict
    reply = client.chat.completions.create(model="my-model", messages=messages, tools=tools)
    return reply.choices[0].message.model_dump()

env = gym.make("AMRSD-ToolUse-v0", families=["tooluse.calc_arith"])
result = run_episode(env, chat, seed=0)
print(result.reward, result.correct, result.messages[-1])
```

:class:`~amrsd_envs.openai_policy.OpenAIPolicy` is the other way round: it talks HTTP itself and hands the env
only the text; this loop keeps the structured conversation (ids included) on the client's side, as strict servers
(OpenAI's own) require.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amrsd_envs.toolcalls import ToolCall, parse_tool_calls, render_tool_calls

__all__ = ["EpisodeResult", "run_episode", "to_action", "tool_calls_of"]

ChatFn = Callable[[list[dict[str, Any]], list[dict[str, Any]]], dict[str, Any]]


@dataclass
class EpisodeResult:
    """One episode: the env's reward and end, whether the verifier accepted the answer, both transcripts."""

    reward: float
    terminated: bool
    truncated: bool
    correct: bool
    info: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)  # as sent to the chat API (structured)
    env_messages: list[dict[str, Any]] = field(default_factory=list)  # the env's own transcript (text)


def tool_calls_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The reply's tool calls as ``[{"id", "type": "function", "function": {"name", "arguments": str}}]``.

    Structured ``tool_calls`` are taken as they are (ids kept, ``arguments`` as JSON text); a reply from a server
    without a tool-call parser has them as ``<tool_call>`` text in ``content`` instead, and they get ids here."""
    calls = []
    for k, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") or {}
        args = fn.get("arguments", {})
        calls.append({"id": call.get("id") or f"call_{k}", "type": "function",
                      "function": {"name": fn.get("name", ""),
                                   "arguments": args if isinstance(args, str) else json.dumps(args)}})
    if not calls:
        for k, parsed in enumerate(parse_tool_calls(message.get("content") or "").calls):
            calls.append({"id": f"call_{k}", "type": "function",
                          "function": {"name": parsed.name, "arguments": json.dumps(parsed.arguments)}})
    return calls


def to_action(message: dict[str, Any]) -> str:
    """The env action for a chat-completions reply message: its text, then its structured ``tool_calls`` as
    ``<tool_call>`` blocks (text that already holds ``<tool_call>`` blocks is used as it is)."""
    text = message.get("content") or ""
    if not message.get("tool_calls"):
        return text
    calls = []
    for call in message["tool_calls"]:
        fn = call.get("function") or {}
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                args = {"_raw": args}  # the env reports it as invalid arguments, the episode goes on
        calls.append(ToolCall(name=fn.get("name", ""), arguments=args if isinstance(args, dict) else {"_raw": args}))
    return (text + "\n" if text else "") + render_tool_calls(calls)


def run_episode(env: Any, chat: ChatFn, *, seed: int | None = None, options: dict[str, Any] | None = None,
                max_replies: int = 64) -> EpisodeResult:
    """Play one episode of ``env`` with ``chat(messages, tools) -> assistant message dict``.

    ``messages`` is the conversation in chat-completions form and ``tools`` is ``info["tools"]`` from
    ``env.reset`` (OpenAI function schemas). Each reply is turned into the env's action (:func:`to_action`); the
    env's ``role: tool`` results go back as tool messages answering the reply's ``tool_calls`` by id (results the
    env adds beyond them, e.g. a malformed ``<tool_call>``'s error, go back as a user message). Ends when the env
    terminates or truncates (``max_replies`` is only a guard against an env that never ends).
    """
    obs, info = env.reset(seed=seed, options=options)
    tools = info["tools"]
    messages = [dict(m) for m in obs]
    for _ in range(max_replies):
        reply = chat(messages, tools)
        calls = tool_calls_of(reply)
        wire: dict[str, Any] = {"role": "assistant", "content": reply.get("content") or ""}
        if calls:
            wire["tool_calls"] = calls
            if not reply.get("tool_calls"):  # the calls were text in content: send them structured from now on
                wire["content"] = parse_tool_calls(wire["content"]).content
        messages.append(wire)
        before = len(obs)
        obs, reward, terminated, truncated, step_info = env.step(to_action(reply))
        results = [m for m in obs[before + 1:] if m["role"] == "tool"]
        for call, result in zip(calls, results):
            messages.append({"role": "tool", "tool_call_id": call["id"], "name": result.get("name"),
                             "content": result["content"]})
        extra = results[len(calls):]
        if extra:
            messages.append({"role": "user", "content": "\n\n".join(m["content"] for m in extra)})
        if terminated or truncated:
            return EpisodeResult(reward=float(reward), terminated=terminated, truncated=truncated,
                                 correct=bool(step_info.get("correct")), info=step_info, messages=messages,
                                 env_messages=obs)
    raise RuntimeError(f"the episode did not end within {max_replies} replies")
