"""Tools the agent can call, their registry, and the executor that runs parsed tool calls.

Built-ins (registered on import; heavy libraries are imported on first use, not here):

- ``python``: run code in the episode's sandbox (:mod:`amrsd_envs.sandbox`).
- ``calculator``: exact arithmetic with sympy from a whitelisted expression syntax.
- ``convert_units``: unit conversion with pint.
- ``lookup``: elements, CODATA constants and facts from ``tasks/data``.
- ``sql``: one SQLite statement on the episode's database.
- ``http_request``: HTTP to the hosts the task allows.

Declare a new tool with :func:`tool` (or :class:`Tool` + :func:`register_tool`); its OpenAI schema
is derived from its pydantic argument model.
"""

from __future__ import annotations

from amrsd_envs.tools import calculator, http_request, lookup, python_exec, sql, units
from amrsd_envs.tools.base import (
    TOOLS,
    Tool,
    ToolError,
    ToolFunction,
    UnknownToolError,
    get_tool,
    inline_json_schema,
    openai_tool_schemas,
    register_tool,
    tool,
)
from amrsd_envs.tools.context import ToolContext, default_data_dir
from amrsd_envs.tools.executor import LIMIT_NOTICE_TOOL_NAME, PARSE_ERROR_TOOL_NAME, execute_tool_calls
from amrsd_envs.tools.session import SERVICES, ToolSession, ToolWorld
from amrsd_envs.tools.sql import create_sqlite_world

BUILTIN_TOOLS = ("python", "calculator", "convert_units", "lookup", "sql", "http_request")

__all__ = [
    "BUILTIN_TOOLS",
    "LIMIT_NOTICE_TOOL_NAME",
    "PARSE_ERROR_TOOL_NAME",
    "SERVICES",
    "TOOLS",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolFunction",
    "ToolSession",
    "ToolWorld",
    "UnknownToolError",
    "calculator",
    "create_sqlite_world",
    "default_data_dir",
    "execute_tool_calls",
    "get_tool",
    "http_request",
    "inline_json_schema",
    "lookup",
    "openai_tool_schemas",
    "python_exec",
    "register_tool",
    "sql",
    "tool",
    "units",
]
