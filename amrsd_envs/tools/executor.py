"""Run one assistant message's tool calls and turn every outcome into a ``role: tool`` message."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

from pydantic import ValidationError

from amrsd_envs.toolcalls import ToolCall
from amrsd_envs.tools.base import TOOLS, ToolError, unknown_tool_message
from amrsd_envs.tools.context import ToolContext

__all__ = [
    "LIMIT_NOTICE_TOOL_NAME",
    "PARSE_ERROR_TOOL_NAME",
    "execute_tool_calls",
    "format_validation_error",
    "truncate_output",
]

PARSE_ERROR_TOOL_NAME = "tool_call_parser"
"""The ``name`` of the tool message that reports a malformed ``<tool_call>`` block."""
LIMIT_NOTICE_TOOL_NAME = "tool_call_limit"
"""The ``name`` of the one tool message that sums up the calls and parse errors beyond ``ctx.messages_per_turn``."""

TRUNCATION_MARKER = "\n[truncated: {n} more characters]"


def truncate_output(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    # Reserve room for the marker with the largest count it can show, so the result fits the limit.
    reserve = len(TRUNCATION_MARKER.format(n=len(text)))
    keep = max(0, limit - reserve)
    return text[:keep] + TRUNCATION_MARKER.format(n=len(text) - keep)


def format_validation_error(tool_name: str, exc: ValidationError) -> str:
    """A short, model-readable account of why arguments failed validation."""
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err.get("loc", ())) or "(arguments)"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return f"invalid arguments for {tool_name!r}: " + "; ".join(problems)


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (not Unicode text: no UTF-8 encoder or tokenizer accepts them) replaced by U+FFFD.

    JSON escapes such as ``"\\ud800"`` in a tool call's arguments decode to them.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


def tool_message(name: str, content: str, output_limit_chars: int) -> dict[str, Any]:
    """A ``role: tool`` message safe for the transcript: the name cut to 100 characters and the content to
    ``output_limit_chars``, both valid Unicode text (lone surrogates replaced), so a tokenizer can encode them."""
    # A model-chosen name goes into the transcript as is: cut it like content and keep it valid text.
    name = valid_text(name if len(name) <= 100 else name[:97] + "...")
    return {"role": "tool", "name": name, "content": valid_text(truncate_output(content, output_limit_chars))}


def _message(name: str, content: str, ctx: ToolContext) -> dict[str, Any]:
    return tool_message(name, content, ctx.output_limit_chars)


def _run_one(call: ToolCall, ctx: ToolContext, allowed_tools: Collection[str]) -> str:
    """The tool message text for one call (``error: ...`` on any failure; never raises Exception)."""
    if call.name not in allowed_tools:
        if call.name in TOOLS:
            return (
                f"error: tool {call.name!r} is not available in this task; "
                f"available tools: {', '.join(sorted(allowed_tools)) or '(none)'}"
            )
        return "error: " + unknown_tool_message(call.name, allowed_tools)
    spec = TOOLS.get(call.name)
    if spec is None:
        return f"error: tool {call.name!r} is allowed by the task but not registered; this is a task bug"
    try:
        args = spec.args_model.model_validate(call.arguments)
    except ValidationError as exc:
        return "error: " + format_validation_error(call.name, exc)
    try:
        result = spec.run(args, ctx)
    except ToolError as exc:
        return f"error: {exc}"
    except Exception as exc:  # a tool bug must not end the episode: the model sees it, tests catch it
        return f"error: tool {call.name!r} failed internally: {type(exc).__name__}: {exc}"
    if not isinstance(result, str):
        return f"error: tool {call.name!r} returned {type(result).__name__} instead of text"
    return result


def execute_tool_calls(
    calls: Sequence[ToolCall],
    parse_errors: Sequence[str],
    ctx: ToolContext,
    allowed_tools: Collection[str],
) -> list[dict[str, Any]]:
    """Run ``calls`` in order and report them, then the parse errors, as tool messages.

    Returns one ``{"role": "tool", "name": ..., "content": str}`` per call (in call order) followed
    by one per parse error (named :data:`PARSE_ERROR_TOOL_NAME`). Unknown or not-allowed tools,
    invalid arguments, tool failures and calls over ``ctx.calls_per_turn`` (this message) or
    ``ctx.calls_total`` (this episode) become ``error: ...`` messages; nothing raises out of here.
    Every call that passes the caps counts against ``ctx.calls_total``, successful or not, so a
    model cannot loop forever on failing calls. Each content is cut to ``ctx.output_limit_chars``.

    One message answers at most ``ctx.messages_per_turn`` items (calls, then parse errors; never fewer than
    ``ctx.calls_per_turn + 1``): when there are more, the items past ``messages_per_turn - 1`` are summed up in one
    last message named :data:`LIMIT_NOTICE_TOOL_NAME`, so a message of thousands of ``<tool_call>`` blocks cannot
    grow the transcript by thousands of messages. Names and contents are valid Unicode text (lone surrogates
    replaced) and a name is cut to 100 characters.
    """
    allowed = frozenset(allowed_tools)
    limit = max(ctx.messages_per_turn, ctx.calls_per_turn + 1)
    overflow = len(calls) + len(parse_errors) > limit
    shown = limit - 1 if overflow else limit
    messages: list[dict[str, Any]] = []
    for position, call in enumerate(calls[:shown]):
        if position >= ctx.calls_per_turn:
            content = (
                f"error: not run: at most {ctx.calls_per_turn} tool calls are run per message; "
                "send the rest in your next message"
            )
        elif ctx.calls_made >= ctx.calls_total:
            content = (
                f"error: not run: the episode's limit of {ctx.calls_total} tool calls is used up; "
                "give your final answer"
            )
        else:
            ctx.calls_made += 1
            content = _run_one(call, ctx, allowed)
        messages.append(_message(call.name, content, ctx))
    for error in parse_errors[: max(0, shown - len(calls))]:
        messages.append(_message(PARSE_ERROR_TOOL_NAME, f"error: {error}", ctx))
    if overflow:
        more_calls = max(0, len(calls) - shown)
        more_errors = len(parse_errors) - max(0, shown - len(calls))
        counts = ((more_calls, "tool call(s)"), (more_errors, "malformed <tool_call> block(s)"))
        parts = [f"{n} more {what}" for n, what in counts if n]
        messages.append(
            _message(
                LIMIT_NOTICE_TOOL_NAME,
                f"error: not run or reported: {' and '.join(parts)} in this message; at most {limit} tool messages "
                f"answer one message and at most {ctx.calls_per_turn} calls are run per message",
                ctx,
            )
        )
    return messages
