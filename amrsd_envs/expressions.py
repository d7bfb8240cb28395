"""Sympy expressions of task specs: parsing with a closed namespace, evaluation, and template formatting.

Task files are authored configuration, not model output, but they are still parsed with a closed namespace (sympy's
public functions plus the helpers below, no builtins) so a typo fails with a clear message instead of reaching Python.

Helpers available inside expressions:

``molar_mass("H2SO4")``     g/mol from the shipped element table (parentheses and hydrates ``CuSO4*5H2O`` work)
``const("N_A")``            a physical constant's SI value from ``tasks/data/constants.json``
``element("Fe", "mass")``   a field of the element table
``roundsig(x, n)``          x rounded to n significant digits (a sympy Float)
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
from pathlib import Path
from typing import Any

import sympy
from sympy.parsing.sympy_parser import (
    stringify_expr,
    convert_xor,
    standard_transformations,
)

def data_dir() -> Path:
    """The data tables: ``$AMRSD_TASK_DATA``, else those of the built-in suite."""
    import os

    from amrsd_envs.tools.context import default_data_dir

    return Path(os.environ.get("AMRSD_TASK_DATA") or default_data_dir())


@functools.lru_cache(maxsize=4)
def _load_json(name: str) -> Any:
    path = data_dir() / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"data table {path} is missing") from None


def element_table() -> dict[str, dict[str, Any]]:
    """Elements keyed by symbol; each entry has at least ``symbol``, ``name``, ``number``, ``mass``."""
    raw = _load_json("elements.json")
    rows = raw["elements"] if isinstance(raw, dict) and "elements" in raw else raw
    table = {}
    for row in rows:
        sym = row.get("symbol")
        mass = row.get("mass", row.get("atomic_weight", row.get("atomic_mass")))
        number = row.get("number", row.get("atomic_number"))
        table[sym] = {**row, "symbol": sym, "mass": mass, "number": number}
    return table


def constants_table() -> dict[str, dict[str, Any]]:
    raw = _load_json("constants.json")
    rows = raw.get("constants", raw) if isinstance(raw, dict) else raw
    if isinstance(rows, list):
        return {r["symbol"] if "symbol" in r else r["name"]: r for r in rows}
    return {k: v for k, v in rows.items() if not k.startswith("_")}


_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)|(\()|(\))(\d*)")


def parse_formula(formula: str) -> dict[str, int]:
    """Element counts of a chemical formula: ``Ca(OH)2`` -> {Ca: 1, O: 2, H: 2}; ``CuSO4*5H2O`` hydrates too."""
    parts = re.split(r"[*·.]", formula.replace(" ", ""))
    total: dict[str, int] = {}
    table = element_table()
    for part in parts:
        m = re.match(r"^(\d+)(.*)$", part)
        mult, body = (int(m.group(1)), m.group(2)) if m else (1, part)
        stack: list[dict[str, int]] = [{}]
        pos = 0
        while pos < len(body):
            tok = _FORMULA_TOKEN.match(body, pos)
            if tok is None:
                raise ValueError(f"cannot parse formula {formula!r} at {body[pos:]!r}")
            sym, count, open_, close, close_count = tok.groups()
            if sym:
                if sym not in table:
                    raise ValueError(f"unknown element {sym!r} in formula {formula!r}")
                stack[-1][sym] = stack[-1].get(sym, 0) + int(count or 1)
            elif open_:
                stack.append({})
            elif close:
                if len(stack) == 1:
                    raise ValueError(f"unbalanced ')' in formula {formula!r}")
                group = stack.pop()
                for k, v in group.items():
                    stack[-1][k] = stack[-1].get(k, 0) + v * int(close_count or 1)
            pos = tok.end()
        if len(stack) != 1:
            raise ValueError(f"unbalanced '(' in formula {formula!r}")
        for k, v in stack[0].items():
            total[k] = total.get(k, 0) + v * mult
    return total


def molar_mass(formula: Any) -> sympy.Float:
    table = element_table()
    counts = parse_formula(str(formula))
    return sympy.Float(sum(float(table[el]["mass"]) * n for el, n in counts.items()), 15)


def const(name: Any) -> sympy.Float:
    table = constants_table()
    key = str(name)
    if key not in table:
        raise ValueError(f"unknown constant {key!r}; known: {', '.join(sorted(table))}")
    entry = table[key]
    value = entry["value"] if isinstance(entry, dict) else entry
    return sympy.Float(value, 15)


def element(symbol: Any, field: Any) -> Any:
    row = element_table().get(str(symbol))
    if row is None:
        raise ValueError(f"unknown element {symbol!r}")
    value = row.get(str(field))
    if value is None:
        raise ValueError(f"element {symbol} has no field {field!r}")
    return sympy.sympify(value) if isinstance(value, (int, float)) else value


def roundsig(x: Any, n: Any) -> sympy.Float:
    v = float(x)
    if v == 0:
        return sympy.Float(0)
    digits = int(n) - 1 - int(math.floor(math.log10(abs(v))))
    return sympy.Float(round(v, digits), int(n) + 2)


def _namespace() -> dict[str, Any]:
    ns = {k: getattr(sympy, k) for k in dir(sympy) if not k.startswith("_")}
    ns.update(
        molar_mass=molar_mass,
        const=const,
        element=element,
        roundsig=roundsig,
        __builtins__={},
        Integer=sympy.Integer,
        Symbol=sympy.Symbol,
        Float=sympy.Float,
        Rational=sympy.Rational,
    )
    return ns


_NS = _namespace()
_TRANSFORMS = standard_transformations + (convert_xor,)
_FORBIDDEN = re.compile(r"__|\blambda\b|\bimport\b|\bexec\b|\beval\b|\bopen\b|\bgetattr\b")


def compile_expr(text: str, names: set[str]) -> None:
    """Check ``text`` statically: valid syntax, no attribute access or dunders, every name defined.

    Nothing is evaluated (functions such as ``gcd`` misbehave on free symbols); values come later via
    :func:`evaluate`. Raises ValueError naming the problem."""
    if _FORBIDDEN.search(text):
        raise ValueError(f"expression {text!r} uses a forbidden construct")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse expression {text!r}: {exc.msg}") from None
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            raise ValueError(f"expression {text!r} uses attribute access ({node.attr}); call functions instead")
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.SetComp, ast.NamedExpr)):
            raise ValueError(f"expression {text!r} uses a comprehension/lambda; write a plain expression")
        if isinstance(node, ast.Name):
            used.add(node.id)
    unknown = used - names - set(_NS)
    if unknown:
        raise ValueError(
            f"expression {text!r} uses undefined name(s) {sorted(unknown)}; defined: {sorted(names)}"
        )


@functools.lru_cache(maxsize=1024)
def names_in(text: str) -> frozenset[str]:
    """Names an expression refers to (its syntax was checked at load by :func:`compile_expr`)."""
    return frozenset(n.id for n in ast.walk(ast.parse(text.strip(), mode="eval")) if isinstance(n, ast.Name))


def to_sympy(value: Any) -> Any:
    """A parameter value as an exact sympy object (floats through their decimal text, so 0.1 stays 1/10)."""
    if isinstance(value, bool):
        return sympy.true if value else sympy.false
    if isinstance(value, int):
        return sympy.Integer(value)
    if isinstance(value, float):
        return sympy.Rational(repr(value))
    if isinstance(value, str):
        return sympy.Symbol(value) if value.isidentifier() else value
    return value


def evaluate(text: str, values: dict[str, Any]) -> Any:
    """Evaluate expression ``text`` with the given values (python or sympy objects)."""
    if _FORBIDDEN.search(text):
        raise ValueError(f"expression {text!r} uses a forbidden construct")
    local = {k: (v.value if isinstance(v, Val) else v) for k, v in values.items()}
    # strings (chemical formulas, names) are passed through as plain Python strings
    try:
        code = _compiled(text, frozenset(local))
        return eval(code, dict(_NS), local)  # noqa: S307 - code came from sympy's parser over a checked expression
    except Exception as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _compiled(text: str, names: frozenset[str]) -> Any:
    """sympy's transformation of ``text`` into Python, compiled once per (expression, defined names).

    Tokenizing and transforming dominate the cost of an evaluation; generators evaluate the same few expressions
    for thousands of instances."""
    local = {n: None for n in names}
    return compile(stringify_expr(text, local, _NS, _TRANSFORMS), "<task-expr>", "eval")


def format_number(value: Any, sig: int) -> str:
    """A decimal number with ``sig`` significant digits, no trailing zeros, scientific notation outside 1e-4..1e9."""
    v = float(sympy.N(value, sig + 5))
    if not math.isfinite(v):
        raise ValueError(f"value {value} is not finite")
    v = float(f"{v:.{sig - 1}e}")  # round to sig significant digits first (719622047 -> 719600000 at sig 4)
    if v == 0:
        return "0"
    exp = int(math.floor(math.log10(abs(v))))
    if -4 <= exp < 9:
        digits = max(sig - 1 - exp, 0)
        text = f"{v:.{digits}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return text
    mant, e = f"{v:.{sig - 1}e}".split("e")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(e)}"


class Val:
    """A template value: formats as its str by default, as LaTeX with ``{v:latex}``, as a number with a float spec
    (``{v:.3f}``, ``{v:.4g}``), or with ``{v:sig4}`` for 4 significant digits."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __format__(self, spec: str) -> str:
        v = self.value
        if spec == "latex":
            return sympy.latex(v) if isinstance(v, sympy.Basic) else str(v)
        if spec.startswith("sig"):
            return format_number(v, int(spec[3:]))
        if spec:
            return format(float(v) if isinstance(v, sympy.Basic) else v, spec)
        return str(v)

    def __getitem__(self, key: Any) -> Any:
        return self.value[key]

    def __str__(self) -> str:
        return str(self.value)
