"""CHAMP (Concept and Hint-Augmented Math Problems; Mao et al. 2024, MIT) from the installed ``champ-dataset``.

The package ships ``champ_dataset/dataset_files/v0.json``: 270 competition problems (``problems``: ``P_<Category>_<n>``
with ``_text``, ``_answer``, ``category``, ``solution.steps[]._text`` and ``ch_list``, the ids of the problem's
human hints ``H_...`` and the general concepts ``C_...`` it uses), the concept texts (``concepts``) and the hint
texts (``hints``). The models' ``conversations`` and ``fws_annotations`` are not read.

Only problems whose final answer the ``math`` verifier can check are kept (:func:`checkable_answer`): a number, an
expression in the problem's variables, a set of values, or an interval. CHAMP states answers in words as often as in
symbols, so a few exact rewrites come first (``C(10, 5), or equivalently 252`` -> ``252``; ``0 is the only possible
value`` -> ``0``; ``The limit exists and is equal to 2/3`` -> ``2/3``; ``100 (i.e., all values)`` -> ``100``;
``x=16 and x=81`` -> ``{16, 81}``); yes/no answers, proofs of a property, functions, named tuples (``a=3, b=-4``),
"at least/at most" answers and factorisations (an expanded polynomial would pass a value check) are dropped. The
kept answer is written as LaTeX through sympy, so Math-Verify reads it as the expression it is.

Each row: ``id`` (``P_Combinatorics_1``), ``problem``, ``answer`` (LaTeX), ``answer_text`` (CHAMP's own wording),
``category``, ``hints`` (list of the human hint texts), ``concepts`` (list of concept texts), ``steps`` (list of
solution steps), and ``reference``: the hints, the concepts and the solution as one text, each part under its own
header line (``Hints:``, ``Concepts:``, ``Solution:``), so reflection sees them clearly delimited.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from amrsd_envs.datasets import DatasetUnavailable, Row

PACKAGE = "champ_dataset"
DATA_FILE = "dataset_files/v0.json"
INSTALL_HINT = "pip install champ-dataset"


def load_raw() -> dict[str, Any]:
    """The package's ``v0.json`` as a dict, read through importlib.resources (never the network)."""
    from importlib import resources

    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise DatasetUnavailable(f"the CHAMP reader needs the champ-dataset package: {INSTALL_HINT}") from None
    target = root.joinpath(DATA_FILE)
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetUnavailable(f"cannot read {PACKAGE}/{DATA_FILE}: {exc} (reinstall: {INSTALL_HINT})") from None


# -- which answers are checkable, and as what -----------------------------------------------------------------------

_UNITS = r"(?:values|inequalities|pairs|roots|times)"
_REWRITES = (  # (pattern, group to keep): exact restatements of a value
    (re.compile(r"^(.*?), or (?:equivalently|an equivalent form such as) (.+)$"), 2),
    (re.compile(r"^(.*?), or approximately .+$"), 1),
    (re.compile(r"^(.*\S)\s+\((?:i\.e\.,|[A-Za-z]{2,}\b)[^()]*(?:\([^()]*\)[^()]*)*\)$"), 1),  # "100 (i.e., all values)"
    (re.compile(r"^(.+) is the only possible value$"), 1),
    (re.compile(r"^The limit exists and is equal to (.+)$"), 1),
    (re.compile(r"^The only possible value for the limit is (.+)$"), 1),
    (re.compile(rf"^(\S+) {_UNITS}$"), 1),  # "98 values", "n times"
)
_NUMBER = r"-?\d+(?:/\d+)?"
_LIST = re.compile(rf"^{_NUMBER}(?:, {_NUMBER})*,? and {_NUMBER}$")  # "1, 4 and 9"
_ONE_VAR = re.compile(r"^x=(.+)$")  # "x=±1, ±2, ±1/2", "x=16 and x=81"
_INTERVAL = re.compile(rf"^([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])$")
_EXPR_CHARS = re.compile(r"^[0-9a-z()+\-*/^!., ]+$")
_FUNCTIONS = {"sqrt", "floor", "C"}
_DROP_PROMPT = re.compile(r"^\s*factori[sz]e\b", re.IGNORECASE)


def _latex(expr_text: str) -> str | None:
    """``expr_text`` (CHAMP's ASCII math: ``2^(n-1)``, ``n(n+1)*2^(n-2)``, ``C(n+1, 2m+1)``, ``(2n)!``) as LaTeX,
    or None when it is not a closed-form expression in single-letter variables."""
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication,
        parse_expr,
        standard_transformations,
    )

    words = set(re.findall(r"[A-Za-z]{2,}", expr_text))
    if words - _FUNCTIONS or not _EXPR_CHARS.match(expr_text.replace("sqrt", "").replace("floor", "").replace("C(", "(")):
        return None
    names = {c: sympy.Symbol(c) for c in set(re.findall(r"(?<![A-Za-z])[a-z](?![A-Za-z])", expr_text))}
    names.update(sqrt=sympy.sqrt, floor=sympy.floor, C=sympy.binomial)
    transformations = (*standard_transformations, implicit_multiplication, convert_xor)
    try:
        expr = parse_expr(expr_text, local_dict=dict(names), transformations=transformations)
        if expr.is_Integer and len(str(expr)) > 20:  # 2^997 stays a power
            expr = parse_expr(expr_text, local_dict=dict(names), transformations=transformations, evaluate=False)
    except Exception:  # noqa: BLE001 - any parse failure means "not an expression"
        return None
    if not isinstance(expr, sympy.Expr) or expr.has(sympy.zoo, sympy.nan):
        return None
    return sympy.latex(expr)


def _set(items: list[str]) -> str | None:
    parts = [_latex(i) for i in items]
    if any(p is None for p in parts) or len(set(parts)) != len(parts):
        return None
    return "\\{" + ", ".join(parts) + "\\}"  # type: ignore[arg-type]


def checkable_answer(answer: str, problem: str = "") -> str | None:
    """CHAMP's ``_answer`` as a LaTeX gold the math verifier can check, or None (proof, word answer, factorisation).

    ``problem`` is the problem text (factorisation problems are dropped: any product equal to the polynomial, the
    polynomial itself included, would pass a value check)."""
    if _DROP_PROMPT.match(problem):
        return None
    text = " ".join(answer.replace("\u2212", "-").split())
    changed = True
    while changed:
        changed = False
        for pattern, group in _REWRITES:
            m = pattern.match(text)
            if m:
                text, changed = m.group(group).strip(), True
    m = _INTERVAL.match(text)
    if m:
        lo, hi = _latex(m.group(2)), _latex(m.group(3))
        return None if lo is None or hi is None else f"{m.group(1)}{lo}, {hi}{m.group(4)}"
    if _LIST.match(text):
        return _set(re.split(r",? and |, ", text))
    m = _ONE_VAR.match(text)
    if m:  # every solution of one unknown: a set, "±v" standing for v and -v
        items: list[str] = []
        for part in re.split(r",? and |, ", m.group(1)):
            part = part.strip().removeprefix("x=")
            items.extend([part[1:], f"-{part[1:]}"] if part.startswith("\u00b1") else [part])
        return _set(items) if len(items) > 1 else _latex(items[0])
    if "=" in text:
        return None
    return _latex(text)


# -- rows ------------------------------------------------------------------------------------------------------------


def _reference(hints: list[str], concepts: list[str], steps: list[str]) -> str:
    parts = []
    if hints:
        parts.append("Hints:\n" + "\n".join(f"- {h}" for h in hints))
    if concepts:
        parts.append("Concepts:\n" + "\n".join(f"- {c}" for c in concepts))
    parts.append("Solution:\n" + "\n".join(steps))
    return "\n\n".join(parts)


def problem_rows(data: dict[str, Any]) -> list[Row]:
    """One row per problem of ``data`` (the parsed ``v0.json``), checkable or not; ``answer`` is None for the
    problems :func:`checkable_answer` drops."""
    hints, concepts = data["hints"], data["concepts"]
    rows: list[Row] = []
    for pid, p in data["problems"].items():
        ch = list(dict.fromkeys(p.get("ch_list") or []))
        hint_texts = [hints[i]["_text"] for i in ch if i.startswith("H_") and i in hints]
        concept_texts = [concepts[i]["_text"] for i in ch if i.startswith("C_") and i in concepts]
        steps = [s["_text"] for s in (p.get("solution") or {}).get("steps", [])]
        rows.append({
            "id": pid,
            "problem": p["_text"],
            "answer": checkable_answer(p["_answer"], p["_text"]),
            "answer_text": p["_answer"],
            "category": p["category"],
            "hints": hint_texts,
            "concepts": concept_texts,
            "steps": steps,
            "reference": _reference(hint_texts, concept_texts, steps),
        })
    return rows


@functools.cache
def _rows() -> tuple[Row, ...]:
    return tuple(r for r in problem_rows(load_raw()) if r["answer"] is not None)


def read_rows() -> list[Row]:
    """The answer-checkable CHAMP problems, in the file's order (copies: callers may change them)."""
    return [dict(r) for r in _rows()]
