"""BFCL v4 (Berkeley Function Calling Leaderboard; Patil et al., Apache-2.0) single-turn categories, read from the
installed ``bfcl-eval`` package.

The package ships ``bfcl_eval/data/BFCL_v4_<category>.json`` (JSON lines: ``id``, ``question`` -- a list of turns,
each a list of chat messages -- and ``function``, the function docs the model may call, in BFCL's own types:
``dict``, ``float``, ``tuple``, ``any``, ...) and, for the categories graded by AST match,
``data/possible_answer/BFCL_v4_<category>.json`` (``id``, ``ground_truth``: ``[{name: {param: [allowed values]}}]``,
``""`` among the values meaning the parameter may be left out). Irrelevance has no possible answers: the right answer
is no call.

Each row: ``id`` (BFCL's, e.g. ``simple_python_0``), ``category`` (the reader's name for it, e.g. ``simple``),
``question`` (the user's message; a BFCL system message, which 48 live tasks have, is put in front of it, separated by
a blank line), ``tools`` (the functions as OpenAI function schemas in JSON-schema types: :func:`openai_tool`) and
``answer`` (the ``bfcl_ast`` gold: the original function docs, the possible answers and how to match them,
:func:`amrsd_envs.verifiers.bfcl_ast.make_gold`).

Tasks that no answer can pass, BFCL's own checker included, are left out
(:func:`amrsd_envs.verifiers.bfcl_ast.unsatisfiable`): ``live_simple_106-63-0`` and ``live_simple_112-68-0`` (a
required parameter whose list of allowed values is empty), ``live_multiple_862-181-3`` (a possible-answer parameter
the function does not take) and ``live_multiple_964-207-0`` (a required parameter the possible answer does not
list). Every other task is kept: 400 simple, 200 multiple, 200 parallel, 200 parallel_multiple, 256 of 258
live_simple, 1051 of 1053 live_multiple, 240 irrelevance.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from amrsd_envs.datasets import DatasetUnavailable, Row

PACKAGE = "bfcl_eval"
INSTALL_HINT = "pip install --no-deps bfcl-eval==2026.3.23"

CATEGORIES: dict[str, str] = {
    "simple": "simple_python",
    "multiple": "multiple",
    "parallel": "parallel",
    "parallel_multiple": "parallel_multiple",
    "live_simple": "live_simple",
    "live_multiple": "live_multiple",
    "irrelevance": "irrelevance",
}
"""Reader category -> BFCL's file stem (``BFCL_v4_<stem>.json``)."""

JSON_SCHEMA_TYPES = {
    "dict": "object",
    "float": "number",
    "tuple": "array",
    "any": "string",
    "integer": "integer",
    "string": "string",
    "boolean": "boolean",
    "array": "array",
}
"""BFCL type -> JSON-schema type (``any`` is checked as a string by BFCL, so it is shown as one)."""


def _read_lines(relative: str) -> list[dict[str, Any]]:
    from importlib import resources

    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise DatasetUnavailable(f"the BFCL reader needs the bfcl-eval package's data: {INSTALL_HINT}") from None
    target = root.joinpath("data").joinpath(relative)
    try:
        text = target.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise DatasetUnavailable(f"cannot read {PACKAGE}/data/{relative}: {exc} (reinstall: {INSTALL_HINT})") from None


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A BFCL parameter schema with its types written as JSON-schema types, recursively (properties and items);
    a float also gets ``"format": "float"``. The input is not changed."""
    out = copy.deepcopy(schema)
    kind = out.get("type")
    if kind == "float":
        out["format"] = "float"
    if kind is not None:
        out["type"] = JSON_SCHEMA_TYPES.get(kind, "string")
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: json_schema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = json_schema(out["items"])
    return out


def openai_tool(function: dict[str, Any]) -> dict[str, Any]:
    """One BFCL function doc as an OpenAI tool schema (``{"type": "function", "function": {...}}``). The name is
    kept as BFCL writes it, dots included (Hermes-format calls allow any name; BFCL's Qwen FC handler does too)."""
    return {
        "type": "function",
        "function": {
            "name": function["name"],
            "description": function.get("description", ""),
            "parameters": json_schema({**function["parameters"], "type": "dict"}),
        },
    }


def _question(turns: list[list[dict[str, str]]]) -> str:
    messages = turns[0]
    return "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))


def category_rows(category: str) -> list[Row]:
    """The rows of one category (a key of :data:`CATEGORIES`), in BFCL's order."""
    from amrsd_envs.verifiers.bfcl_ast import make_gold, unsatisfiable

    stem = CATEGORIES[category]
    tasks = _read_lines(f"BFCL_v4_{stem}.json")
    answers = {} if "irrelevance" in category else {
        a["id"]: a["ground_truth"] for a in _read_lines(f"possible_answer/BFCL_v4_{stem}.json")
    }
    rows = []
    for task in tasks:
        if len(task["question"]) != 1:
            continue  # single-turn categories only
        truth = answers.get(task["id"], [])
        if "irrelevance" not in category and not truth:
            raise DatasetUnavailable(f"{PACKAGE}: no possible answer for {task['id']} (reinstall: {INSTALL_HINT})")
        if unsatisfiable(task["function"], truth) is not None:
            continue  # a data error of BFCL's: no answer passes (see the module docstring)
        rows.append({
            "id": task["id"],
            "category": category,
            "question": _question(task["question"]),
            "tools": [openai_tool(f) for f in task["function"]],
            "answer": make_gold(category, task["function"], truth),
        })
    return rows


@functools.cache
def _rows(category: str) -> tuple[Row, ...]:
    return tuple(category_rows(category))


def read_rows(category: str) -> list[Row]:
    """The rows of ``category`` (shallow copies, as every reader returns; the env hands out copies of ``tools``)."""
    return [dict(r) for r in _rows(category)]
