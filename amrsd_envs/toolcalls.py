"""Parse and render tool calls in the Hermes/Qwen ``<tool_call>`` JSON format.

A model asks for a tool by writing, anywhere in its message::

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "7/3"}}
    </tool_call>

Several calls may appear in one message, with free text before, between and after them.
:func:`parse_tool_calls` turns model text into :class:`ToolCall` objects plus one error string per
malformed call; it never raises on any ``str``. :func:`render_tool_calls` writes calls in exactly
the layout Qwen2.5's chat template produces, so SFT data and parsing agree:
``parse_tool_calls(render_tool_calls(calls)).calls == calls``.

The JSON body is read with :meth:`json.JSONDecoder.raw_decode` starting right after the opening tag,
not by splitting on the closing tag, so an argument that itself contains ``</tool_call>`` (say, Python
code that prints it) is parsed correctly.

Keys accepted in a call body, matched against vLLM's ``hermes`` tool parser (which reads only
``obj["name"]`` and ``obj["arguments"]`` and ignores everything else):

- ``"name"``: required, a non-empty string (vLLM also fails without it; it would pass ``""`` on);
- ``"arguments"``: a JSON object, or a JSON string that decodes to one (the OpenAI wire format; vLLM
  would forward such a string re-encoded, we decode it), or ``null`` -> ``{}``. Anything else (a list,
  a number, a string that is not a JSON object) is an error, as it is not a call a tool can take;
- any other top-level key (``"id": "call_1"``, ``"type": "function"``, ...) is ignored, as vLLM does;
- ``"arguments"`` may be left out (-> ``{}``; vLLM would fail) only when the other keys are call metadata
  (:data:`METADATA_KEYS`): ``{"name": "f", "parameters": {...}}`` is an error, not a call of ``f``
  with no arguments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLOSE_TAG",
    "METADATA_KEYS",
    "OPEN_TAG",
    "ParsedToolCalls",
    "ToolCall",
    "parse_tool_calls",
    "render_tool_call",
    "render_tool_calls",
]

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
# Top-level keys models add beside "name"/"arguments" (OpenAI-style call metadata); ignored, like every other extra
# key, and also the only extra keys allowed when "arguments" is absent.
METADATA_KEYS = frozenset({"id", "type", "index", "call_id"})

_JSON_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ToolCall:
    """One requested tool invocation: the tool's name and its keyword arguments (a JSON object)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedToolCalls:
    """What :func:`parse_tool_calls` found in one message.

    Attributes:
        content: the message text with every ``<tool_call>...</tool_call>`` block removed, stripped.
        calls: the well-formed calls, in the order they appear.
        errors: one human-readable message per malformed call, each naming the call's 1-based
            position among all ``<tool_call>`` blocks of the message ("tool call #2: ...").
    """

    content: str
    calls: list[ToolCall]
    errors: list[str]


def _skip_whitespace(text: str, pos: int) -> int:
    """Index of the first non-whitespace character at or after ``pos`` (``len(text)`` if none).

    Uses ``str.isspace`` rather than JSON's four whitespace characters: models put newlines and
    sometimes non-breaking spaces around the object.
    """
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


MAX_MALFORMED_BLOCKS = 64
"""After this many malformed blocks in one message the rest is reported in one error, unparsed (a message of
thousands of broken blocks would otherwise cost time quadratic in its length)."""


def _resync(text: str, search_from: int) -> int:
    """Where parsing resumes after a malformed call body that starts at ``search_from``.

    The block ends at the next closing tag; but if another opening tag comes first the malformed
    call was never closed, and the next call must not be swallowed with it.
    """
    close = text.find(CLOSE_TAG, search_from)
    reopen = text.find(OPEN_TAG, search_from)
    if reopen != -1 and (close == -1 or reopen < close):
        return reopen
    if close != -1:
        return close + len(CLOSE_TAG)
    return len(text)


def _call_from_object(obj: Any, label: str) -> ToolCall | str:
    """Validate one decoded JSON value as a call; return the call or an error message."""
    if not isinstance(obj, dict):
        return (
            f"{label}: expected a JSON object like "
            f'{{"name": "...", "arguments": {{...}}}}, got {type(obj).__name__}'
        )
    if "name" not in obj:
        return f'{label}: missing "name" (the tool to call)'
    name = obj["name"]
    if not isinstance(name, str):
        return f'{label}: "name" must be a string, got {type(name).__name__}'
    if not name:
        return f'{label}: "name" must be a non-empty string'
    if "arguments" not in obj:
        # Without "arguments" the call means "no arguments" only when nothing else could have held them: a body
        # like {"name": "f", "parameters": {...}} must not silently run f with no arguments.
        misplaced = [key[:40] for key in sorted(set(obj) - {"name"} - METADATA_KEYS)[:5]]
        if misplaced:
            return (
                f'{label} ({name[:60]!r}): missing "arguments" (found key(s) {misplaced}); put the '
                f'tool\'s arguments under "arguments"'
            )
    arguments = obj.get("arguments", {})
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        # Some models double-encode the arguments as a JSON string (the OpenAI wire format).
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError) as exc:
            return f'{label} ({name[:60]!r}): "arguments" is a string that is not valid JSON ({exc})'
    if not isinstance(arguments, dict):
        return (
            f'{label} ({name[:60]!r}): "arguments" must be a JSON object, '
            f"got {type(arguments).__name__}"
        )
    return ToolCall(name=name, arguments=arguments)


def parse_tool_calls(text: str) -> ParsedToolCalls:
    """Find every ``<tool_call>`` block in ``text``; never raises on any ``str``.

    Rules: the body must be one JSON object ``{"name": str, "arguments": object}`` followed
    (whitespace allowed) by ``</tool_call>``; ``arguments`` may be null (-> ``{}``) or a JSON string
    that decodes to an object, and missing (-> ``{}``) when no non-metadata key could hold it; other
    top-level keys such as ``"id"`` and ``"type"`` are ignored (see the module docstring). An
    unclosed final block is parsed to the end of the text and accepted if its JSON is complete. A
    malformed block yields an error and parsing continues with the next block, so one bad call does
    not hide the others.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_tool_calls expects str, got {type(text).__name__}")
    content_parts: list[str] = []
    calls: list[ToolCall] = []
    errors: list[str] = []
    pos = 0
    index = 0
    while True:
        start = text.find(OPEN_TAG, pos)
        if start == -1:
            content_parts.append(text[pos:])
            break
        content_parts.append(text[pos:start])
        if len(errors) >= MAX_MALFORMED_BLOCKS:
            # each malformed block costs a scan of the rest of the text; stop before that turns quadratic
            rest = text.count(OPEN_TAG, start)
            errors.append(f"{rest} more <tool_call> block(s) not parsed after {MAX_MALFORMED_BLOCKS} malformed ones")
            break
        index += 1
        label = f"tool call #{index}"
        body_start = start + len(OPEN_TAG)
        json_start = _skip_whitespace(text, body_start)
        try:
            obj, json_end = _JSON_DECODER.raw_decode(text, json_start)
        except json.JSONDecodeError as exc:
            pos = _resync(text, body_start)
            closed = pos - len(CLOSE_TAG) >= body_start and text.startswith(
                CLOSE_TAG, pos - len(CLOSE_TAG)
            )
            what = "invalid JSON" if closed else "unclosed <tool_call> with invalid JSON"
            errors.append(f"{label}: {what}: {exc.msg} (at character {exc.pos - start} of the call)")
            continue
        except (ValueError, RecursionError) as exc:
            # RecursionError: nesting too deep; ValueError: e.g. an integer literal over Python's
            # int-string conversion limit (4300 digits).
            pos = _resync(text, body_start)
            reason = "JSON nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            errors.append(f"{label}: cannot parse the JSON: {reason}")
            continue
        after = _skip_whitespace(text, json_end)
        if text.startswith(CLOSE_TAG, after):
            pos = after + len(CLOSE_TAG)
        elif after >= len(text):
            # An unclosed final block (generation stopped before the tag): the JSON is complete.
            pos = len(text)
        else:
            pos = _resync(text, after)
            errors.append(
                f"{label}: unexpected text after the JSON object "
                f"({text[after:after + 20]!r}); expected {CLOSE_TAG}"
            )
            continue
        result = _call_from_object(obj, label)
        if isinstance(result, ToolCall):
            calls.append(result)
        else:
            errors.append(result)
    return ParsedToolCalls(content="".join(content_parts).strip(), calls=calls, errors=errors)


def render_tool_call(call: ToolCall) -> str:
    """One call as a ``<tool_call>`` block, laid out as Qwen2.5's chat template renders it."""
    if not isinstance(call, ToolCall):
        raise TypeError(f"render_tool_call expects a ToolCall, got {type(call).__name__}")
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"{OPEN_TAG}\n{body}\n{CLOSE_TAG}"


def render_tool_calls(calls: Sequence[ToolCall]) -> str:
    """Calls as the text a model should emit: one block per call, newline-separated, no trailer.

    The exact inverse of :func:`parse_tool_calls` for calls with a non-empty name and
    JSON-serialisable arguments.
    """
    return "\n".join(render_tool_call(call) for call in calls)
