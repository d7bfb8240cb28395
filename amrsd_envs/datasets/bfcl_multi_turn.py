"""BFCL v4 ``multi_turn_base`` (Berkeley Function Calling Leaderboard; Patil et al., Apache-2.0), read from the
installed ``bfcl-eval`` package.

The package ships ``bfcl_eval/data/BFCL_v4_multi_turn_base.json`` (JSON lines: ``id``, ``question`` -- a list of
user turns, each a list of chat messages --, ``initial_config`` per backend class, ``involved_classes``),
``data/possible_answer/BFCL_v4_multi_turn_base.json`` (``ground_truth``: per turn, a list of call strings such as
``"cd(folder='document')"``) and the function docs of each backend class in ``data/multi_turn_func_doc/``.

Each row: ``id`` (BFCL's, e.g. ``multi_turn_base_0``), ``category`` (``multi_turn_base``), ``question`` (the first
user turn), ``tools`` (the function docs of the involved classes, in BFCL's order, as OpenAI function schemas:
:func:`amrsd_envs.datasets.bfcl.openai_tool`) and ``answer`` (the ``bfcl_multi_turn`` gold, JSON:
``involved_classes``, ``initial_config``, ``turns`` -- every user turn's messages -- and ``ground_truth``; see
:mod:`amrsd_envs.bfcl_multi_turn`). BFCL's ``excluded_function`` field is not read, as BFCL's own pipeline does
not read it: every documented function of the involved classes is shown.

All 200 tasks are kept: the oracle (the ground truth, played through the env) passes on every one of them
(``tests/test_bfcl_multi_turn.py``).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from amrsd_envs.datasets import DatasetUnavailable, Row

CATEGORY = "multi_turn_base"
DROPPED: dict[str, str] = {}
"""Task id -> why it is left out (a ground truth that fails on the backends). Empty: none fails."""


def task_row(task: dict[str, Any], truth: list[list[str]]) -> Row:
    """One row from a BFCL task and its ground truth."""
    from amrsd_envs.bfcl_multi_turn import function_docs, user_text
    from amrsd_envs.datasets.bfcl import openai_tool

    classes = task["involved_classes"]
    gold = {
        "involved_classes": classes,
        "initial_config": task["initial_config"],
        "turns": task["question"],
        "ground_truth": truth,
    }
    return {
        "id": task["id"],
        "category": CATEGORY,
        "question": user_text(task["question"][0]),
        "tools": [openai_tool(doc) for cls in classes for doc in function_docs(cls)],
        "answer": json.dumps(gold, ensure_ascii=False),
    }


def category_rows() -> list[Row]:
    """The rows of ``multi_turn_base``, in BFCL's order, without :data:`DROPPED`."""
    from amrsd_envs.datasets.bfcl import INSTALL_HINT, PACKAGE, _read_lines

    tasks = _read_lines(f"BFCL_v4_{CATEGORY}.json")
    answers = {a["id"]: a["ground_truth"] for a in _read_lines(f"possible_answer/BFCL_v4_{CATEGORY}.json")}
    rows = []
    for task in tasks:
        if task["id"] in DROPPED:
            continue
        truth = answers.get(task["id"])
        if truth is None or len(truth) != len(task["question"]):
            raise DatasetUnavailable(f"{PACKAGE}: no ground truth for every turn of {task['id']} "
                                     f"(reinstall: {INSTALL_HINT})")
        rows.append(task_row(task, truth))
    return rows


@functools.cache
def _rows() -> tuple[Row, ...]:
    return tuple(category_rows())


def read_rows() -> list[Row]:
    """The rows (shallow copies, as every reader returns)."""
    return [dict(r) for r in _rows()]
