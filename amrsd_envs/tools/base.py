"""Tool declaration, JSON-schema derivation and the tool registry.

A tool is declared once: a name, a description, a pydantic model of its arguments (every field
with a ``description``) and a function ``run(args, ctx) -> str``. Its OpenAI function schema is
derived from the model (inlined: no ``$defs``/``$ref``, no ``title``), ready for
``tokenizer.apply_chat_template(tools=...)`` or an OpenAI-compatible server.

Registry: :data:`TOOLS` (read-only view), :func:`register_tool` (a duplicate name raises),
:func:`get_tool` (an unknown name raises ``KeyError`` listing the valid names and the closest one),
and the :func:`tool` decorator that declares and registers in one step.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    from amrsd_envs.tools.context import ToolContext

__all__ = [
    "TOOLS",
    "Tool",
    "ToolError",
    "ToolFunction",
    "UnknownToolError",
    "get_tool",
    "inline_json_schema",
    "openai_tool_schemas",
    "register_tool",
    "tool",
    "unknown_tool_message",
]


class ToolError(Exception):
    """A failure the model caused and can fix (bad expression, unknown unit, refused host...).

    The executor shows its message to the model as ``error: <message>``; any other exception is
    reported as an internal failure of the tool.
    """


class UnknownToolError(KeyError, ValueError):
    """An unknown tool name; the message lists the valid names and the closest match."""

    def __str__(self) -> str:
        # KeyError's str() would quote the message; this one is read by people.
        return str(self.args[0]) if self.args else ""


class ToolFunction(Protocol):
    """The one signature every tool implementation has."""

    def __call__(self, args: Any, ctx: ToolContext, /) -> str: ...


def _resolve_ref(ref: str, defs: Mapping[str, Any]) -> dict[str, Any]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix):] not in defs:
        raise ValueError(f"cannot inline JSON-schema reference {ref!r}: only '#/$defs/<name>' is supported")
    return defs[ref[len(prefix):]]


def _inline(node: Any, defs: Mapping[str, Any], stack: tuple[str, ...]) -> Any:
    """Copy of ``node`` with ``$ref`` replaced by the referenced schema and ``title`` keys removed.

    ``stack`` holds the references being expanded, so a recursive model fails clearly instead of
    recursing forever (a recursive schema cannot be inlined).
    """
    if isinstance(node, list):
        return [_inline(item, defs, stack) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if ref in stack:
            raise ValueError(
                f"argument model is recursive through {ref!r}; tool arguments must have a finite, "
                "inlinable schema"
            )
        target = _inline(_resolve_ref(ref, defs), defs, (*stack, ref))
        # Sibling keys of $ref (pydantic puts a field's description there) override the target's.
        siblings = {k: _inline(v, defs, stack) for k, v in node.items() if k not in ("$ref", "title")}
        return {**target, **siblings}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "properties" and isinstance(value, dict):
            # Property *names* may be anything, including "title": only their schemas are cleaned.
            out[key] = {name: _inline(sub, defs, stack) for name, sub in value.items()}
        else:
            out[key] = _inline(value, defs, stack)
    return out


def inline_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``model`` (by alias, validation mode) with every ``$ref`` inlined and no titles."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    return _inline(copy.deepcopy(schema), defs, ())


def _undocumented_fields(model: type[BaseModel]) -> list[str]:
    return [name for name, info in model.model_fields.items() if not (info.description or "").strip()]


@dataclass(frozen=True)
class Tool:
    """A tool: its name, what it does, its argument model and its implementation.

    ``run`` receives a validated instance of ``args_model`` and the episode's
    :class:`~amrsd_envs.tools.context.ToolContext`, and returns the text the model sees; it raises
    :class:`ToolError` for failures the model should read and fix.
    """

    name: str
    description: str
    args_model: type[BaseModel]
    run: ToolFunction

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"tool name must be an identifier-like string (letters, digits, _), got {self.name!r}")
        if not self.description.strip():
            raise ValueError(f"tool {self.name!r} needs a non-empty description: the model reads it")
        if not (isinstance(self.args_model, type) and issubclass(self.args_model, BaseModel)):
            raise TypeError(f"tool {self.name!r}: args_model must be a pydantic BaseModel subclass")
        missing = _undocumented_fields(self.args_model)
        if missing:
            raise ValueError(
                f"tool {self.name!r}: argument field(s) {missing} have no description; "
                "declare them with Field(description=...) so the model knows what to pass"
            )
        if not callable(self.run):
            raise TypeError(f"tool {self.name!r}: run must be callable as run(args, ctx) -> str")

    def parameters_schema(self) -> dict[str, Any]:
        """JSON schema of the arguments: inlined, without titles.

        The model's docstring (the schema's root ``description``) is dropped: the tool's own
        description is what the model reads, and repeating it costs prompt tokens.
        """
        schema = inline_json_schema(self.args_model)
        schema.pop("description", None)
        return schema

    def openai_schema(self) -> dict[str, Any]:
        """``{"type": "function", "function": {"name", "description", "parameters"}}``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters_schema(),
            },
        }

    def schema(self) -> dict[str, Any]:
        """The OpenAI function schema (same as :meth:`openai_schema`)."""
        return self.openai_schema()


_REGISTRY: dict[str, Tool] = {}

TOOLS: Mapping[str, Tool] = MappingProxyType(_REGISTRY)
"""Every registered tool by name (read-only; add tools with :func:`register_tool`)."""


def register_tool(new_tool: Tool) -> Tool:
    """Add ``new_tool`` to the registry and return it; a name already registered raises ``ValueError``."""
    if not isinstance(new_tool, Tool):
        raise TypeError(f"register_tool expects a Tool, got {type(new_tool).__name__}")
    if new_tool.name in _REGISTRY:
        raise ValueError(
            f"a tool named {new_tool.name!r} is already registered; choose another name "
            f"(registered: {sorted(_REGISTRY)})"
        )
    _REGISTRY[new_tool.name] = new_tool
    return new_tool


def tool(*, name: str, description: str, args: type[BaseModel]) -> Callable[[ToolFunction], Tool]:
    """Decorator: declare a tool from its implementation function and register it.

    Example::

        @tool(name="echo", description="Repeat the text.", args=EchoArgs)
        def echo(args: EchoArgs, ctx: ToolContext) -> str:
            return args.text
    """

    def decorate(run: ToolFunction) -> Tool:
        return register_tool(Tool(name=name, description=description, args_model=args, run=run))

    return decorate


def unknown_tool_message(name: str, valid: Iterable[str]) -> str:
    """'unknown tool 'x'; did you mean 'y'? valid tools: a, b' (the closest match by difflib)."""
    valid_sorted = sorted(valid)
    close = difflib.get_close_matches(name, valid_sorted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = ", ".join(valid_sorted) if valid_sorted else "(none)"
    return f"unknown tool {name!r}{hint}; valid tools: {listing}"


def get_tool(name: str) -> Tool:
    """The registered tool called ``name``.

    Raises :class:`UnknownToolError` (a ``KeyError`` and a ``ValueError``) naming the valid tools
    and the closest match.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownToolError(unknown_tool_message(name, _REGISTRY)) from None


def openai_tool_schemas(names: Iterable[str]) -> list[dict[str, Any]]:
    """OpenAI function schemas of the named tools, in the given order (unknown names raise)."""
    return [get_tool(name).openai_schema() for name in names]
