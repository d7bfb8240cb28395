"""The ``calculator`` tool: exact arithmetic with sympy, from a whitelisted expression syntax.

Model text is never evaluated as Python. The expression is parsed with :func:`ast.parse` (which
builds a syntax tree and runs nothing), every node is checked against a whitelist (numbers, the
arithmetic operators, parentheses, the functions and constants in :data:`FUNCTIONS` and
:data:`CONSTANTS`), and the sympy value is built node by node from that tree. Building it ourselves
instead of handing the string to ``sympy.parse_expr`` keeps every operation under our bounds:
``parse_expr`` itself runs ``eval`` on the transformed text and some callables (``gcd``) would
evaluate their arguments before any check could run.

Size bounds keep every call fast: a power, ``exp``/``sinh``/``cosh``, ``factorial`` or ``binomial``
whose result would exceed about 10^4932 in magnitude (:data:`MAX_MAGNITUDE_BITS`) is refused
before it is computed (``9**9**9`` is refused at once), and an exact integer or fraction larger than
:data:`MAX_EXACT_BITS` is replaced by a 30-digit float.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from amrsd_envs.tools.base import ToolError, tool
from amrsd_envs.tools.context import ToolContext

__all__ = ["CONSTANTS", "FUNCTIONS", "CalculatorArgs", "evaluate_expression"]

MAX_EXPRESSION_CHARS = 500
MAX_NODES = 300
MAX_DEPTH = 60
MAX_EXACT_BITS = 10_000
"""Exact integers/fractions above this many bits (about 3,000 digits) become 30-digit floats."""
MAX_MAGNITUDE_BITS = 16_384
"""Results with |log2 |x|| above this (about 10^±4932, the x87 long-double range) are refused."""
MAX_EXACT_CHARS = 1_000
"""Exact values longer than this are not printed (the approximation is)."""
FLOAT_DIGITS = 30
APPROX_DIGITS = 15
MAX_LITERAL_EXPONENT = 4_000

# Typographic operators models sometimes write, mapped to Python syntax before parsing.
_REPLACEMENTS = {"^": "**", "×": "*", "·": "*", "÷": "/", "−": "-", "π": "pi", "\n": " ", "\t": " "}

CONSTANTS = ("pi", "E", "e", "I")
FUNCTIONS = (
    "sqrt", "cbrt", "root", "exp", "log", "ln", "log10", "log2",
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot", "atan2",
    "sinh", "cosh", "tanh", "asinh", "acosh", "atanh",
    "factorial", "binomial", "gcd", "lcm",
    "Abs", "abs", "floor", "ceiling", "ceil", "sign", "Min", "Max", "min", "max", "Mod", "mod",
)  # fmt: skip


class CalculatorArgs(BaseModel):
    """Arguments of the calculator tool."""

    model_config = ConfigDict(extra="forbid")

    expression: str = Field(
        description=(
            "An arithmetic expression, e.g. '7/3 + sqrt(2)', '2^10', 'binomial(10, 3)', 'log(8, 2)'. "
            "Numbers, + - * / ** ^ % //, parentheses, the constants pi, E, I, and the functions "
            + ", ".join(FUNCTIONS)
            + ". Trigonometric functions take radians."
        ),
        min_length=1,
    )


@cache
def _sympy() -> Any:
    # sympy takes ~0.5 s to import: only episodes that calculate pay for it.
    import sympy

    return sympy


def _to_mpmath(value: Any, bits: int) -> Any:
    """mpmath value of a numeric sympy expression; ToolError if sympy cannot evaluate it."""
    try:
        return value._to_mpmath(bits, allow_ints=False)
    except Exception as exc:  # sympy raises PrecisionExhausted, ValueError, TypeError here
        raise ToolError(
            f"cannot evaluate {str(value)[:80]} numerically ({type(exc).__name__}); "
            "try a simpler or smaller expression"
        ) from None


def _log2_abs(value: Any) -> float:
    """log2 |value| of a numeric sympy expression as a float (-inf for 0, inf if unbounded)."""
    import mpmath

    magnitude = abs(_to_mpmath(value, 64))
    if magnitude == 0:
        return -math.inf
    if not mpmath.isfinite(magnitude):
        return math.inf
    return float(mpmath.log(magnitude, 2))


def _abs_float(value: Any) -> float:
    """|value| of a numeric sympy expression as a float (inf if too large for a float)."""
    import mpmath

    return float(min(abs(_to_mpmath(value, 64)), mpmath.mpf("1e300")))


def _out_of_range(log2_size: float, what: str) -> ToolError:
    """Error for a value whose log2 |value| is ``log2_size`` (positive: too large, negative: too small)."""
    direction = "large" if log2_size >= 0 else "small"
    if math.isfinite(log2_size):
        decimal_exponent = log2_size * math.log10(2)
        exponent_text = f"{decimal_exponent:.0f}" if abs(decimal_exponent) < 1e7 else f"({decimal_exponent:.3g})"
        size = f"about 10^{exponent_text}"
    else:
        size = "unbounded"
    return ToolError(
        f"{what} is too {direction} to compute ({size}; the calculator's range is 10^-4932 to 10^4932)"
    )


def _exact_bits(value: Any) -> float | None:
    """log2 of the larger of numerator and denominator of an exact rational; None for anything else."""
    if value.is_Rational:
        return max(math.log2(abs(value.p)) if value.p else 0.0, math.log2(value.q))
    return None


def _checked(value: Any) -> Any:
    """``value`` after the per-node checks: defined, within range, exact only while small."""
    sp = _sympy()
    if value.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise ToolError("the expression is undefined or infinite (division by zero, log(0), ...)")
    bits = _exact_bits(value)
    if bits is not None and bits > MAX_EXACT_BITS:
        value = sp.Float(value, FLOAT_DIGITS)
    if value.is_number:
        log2 = _log2_abs(value)
        if math.isfinite(log2) and abs(log2) > MAX_MAGNITUDE_BITS:
            raise _out_of_range(log2, "the result")
        if log2 == math.inf:
            raise ToolError("the expression is undefined or infinite")
    return value


def _power(base: Any, exponent: Any) -> Any:
    """``base ** exponent``, refused or computed in floating point when the exact result is huge."""
    sp = _sympy()
    if base.is_zero or base == 1 or base == -1:
        return base**exponent  # sympy reduces these without computing anything large
    size_exponent = _abs_float(exponent)
    signed_log2_base = _log2_abs(base)
    log2_base = abs(signed_log2_base)
    magnitude_bits = size_exponent * log2_base
    if magnitude_bits > MAX_MAGNITUDE_BITS:
        # Only the direction of the estimate is needed here, for the message.
        real_exponent = float(_sympy().re(exponent).evalf(20)) if exponent.is_number else 1.0
        growing = (real_exponent >= 0) == (signed_log2_base >= 0)
        raise _out_of_range(magnitude_bits if growing else -magnitude_bits, "this power")
    base_bits = _exact_bits(base)
    if base_bits is None and not base.has(sp.Float):
        base_bits = max(1.0, log2_base)
    if (
        base_bits is not None
        and exponent.is_Rational
        and size_exponent * base_bits > MAX_EXACT_BITS
    ):
        # Exact but too many digits: evaluate in 30-digit floating point instead.
        float_exponent = exponent if exponent.is_Integer else sp.Float(exponent, FLOAT_DIGITS)
        return base.evalf(FLOAT_DIGITS) ** float_exponent  # evalf, not Float(): the base may be complex
    return base**exponent


def _exp_like(func_name: str) -> Callable[[Any], Any]:
    def apply(arg: Any) -> Any:
        sp = _sympy()
        bits = abs(float(sp.re(arg).evalf(20))) * math.log2(math.e) if arg.is_number else 0.0
        if bits > MAX_MAGNITUDE_BITS:
            raise _out_of_range(bits, f"{func_name}({arg})")
        return getattr(sp, func_name)(arg)

    return apply


def _require_integer(value: Any, func_name: str) -> int:
    if not value.is_Integer:
        raise ToolError(f"{func_name} takes integers, got {value}")
    return int(value)


def _factorial(arg: Any) -> Any:
    sp = _sympy()
    n = _require_integer(arg, "factorial")
    if n < 0:
        raise ToolError(f"factorial is defined for non-negative integers, got {n}")
    bits = math.lgamma(n + 1) / math.log(2) if n < 10**300 else math.inf
    if bits > MAX_MAGNITUDE_BITS:
        raise _out_of_range(bits, f"factorial({n})")
    if bits > MAX_EXACT_BITS:
        return sp.gamma(sp.Float(n + 1, FLOAT_DIGITS))
    return sp.factorial(arg)


def _binomial(n_arg: Any, k_arg: Any) -> Any:
    sp = _sympy()
    n = _require_integer(n_arg, "binomial")
    k = _require_integer(k_arg, "binomial")
    if n < 0:
        raise ToolError(f"binomial(n, k) takes a non-negative n, got {n}")
    if k < 0 or k > n:
        return sp.Integer(0)
    k = min(k, n - k)
    if n >= 10**300:
        raise _out_of_range(math.inf, f"binomial({n}, {k})")
    bits = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)
    if bits > MAX_MAGNITUDE_BITS:
        raise _out_of_range(bits, f"binomial({n}, {k})")
    if bits > MAX_EXACT_BITS:
        big_n = sp.Float(n, FLOAT_DIGITS)
        return sp.gamma(big_n + 1) / (sp.gamma(sp.Float(k + 1, FLOAT_DIGITS)) * sp.gamma(big_n - k + 1))
    return sp.binomial(n_arg, k_arg)


def _integer_fold(func_name: str, fold: Callable[[int, int], int]) -> Callable[..., Any]:
    def apply(*args: Any) -> Any:
        if len(args) < 2:
            raise ToolError(f"{func_name} takes at least two integers")
        values = [_require_integer(a, func_name) for a in args]
        result = values[0]
        for value in values[1:]:
            result = fold(result, value)
        return _sympy().Integer(result)

    return apply


@cache
def _function_table() -> dict[str, Callable[..., Any]]:
    sp = _sympy()
    table: dict[str, Callable[..., Any]] = {
        "sqrt": lambda x: _power(x, sp.Rational(1, 2)),
        "cbrt": lambda x: _power(x, sp.Rational(1, 3)),
        "root": lambda x, n: _power(x, 1 / n) if n != 0 else sp.zoo,
        "exp": _exp_like("exp"),
        "sinh": _exp_like("sinh"),
        "cosh": _exp_like("cosh"),
        "log": lambda x, base=None: sp.log(x) if base is None else sp.log(x, base),
        "ln": sp.log,
        "log10": lambda x: sp.log(x, 10),
        "log2": lambda x: sp.log(x, 2),
        "factorial": _factorial,
        "binomial": _binomial,
        "gcd": _integer_fold("gcd", math.gcd),
        "lcm": _integer_fold("lcm", math.lcm),
        "abs": sp.Abs,
        "ceil": sp.ceiling,
        "min": sp.Min,
        "max": sp.Max,
        "mod": sp.Mod,
    }
    for name in ("sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot", "atan2",
                 "tanh", "asinh", "acosh", "atanh", "Abs", "floor", "ceiling", "sign", "Min", "Max", "Mod"):
        table[name] = getattr(sp, name)
    missing = set(FUNCTIONS) - set(table)
    if missing:
        raise RuntimeError(f"calculator functions declared but not implemented: {sorted(missing)}")
    return table


def _literal(node: ast.Constant, source: str) -> Any:
    sp = _sympy()
    value = node.value
    if isinstance(value, complex):
        raise ToolError(f"imaginary literals like {value!r} are not supported; write them with I, e.g. 2*I")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError(f"only numbers are allowed as literals, got {value!r}")
    if isinstance(value, int):
        return sp.Integer(value)
    # Decimal literals are taken exactly (0.1 is 1/10), from their source text: float(...) would
    # already have rounded them.
    text = ast.get_source_segment(source, node) or repr(value)
    try:
        decimal = Decimal(text)
    except InvalidOperation:
        decimal = Decimal(repr(value))
    if not decimal.is_finite() or abs(decimal.adjusted()) > MAX_LITERAL_EXPONENT:
        raise ToolError(f"number {text} is out of range (the calculator's range is about 10^±4932)")
    numerator, denominator = decimal.as_integer_ratio()
    return sp.Rational(numerator, denominator)


_BINARY_NAMES = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//",
}


def _binary(op: ast.operator, left: Any, right: Any) -> Any:
    sp = _sympy()
    if isinstance(op, ast.Add):
        return left + right
    if isinstance(op, ast.Sub):
        return left - right
    if isinstance(op, ast.Mult):
        return left * right
    if isinstance(op, ast.Div):
        if right.is_zero:
            raise ToolError("division by zero")
        return left / right
    if isinstance(op, ast.Pow):
        if left.is_zero and right.is_negative:
            raise ToolError("division by zero (0 to a negative power)")
        return _power(left, right)
    if isinstance(op, (ast.Mod, ast.FloorDiv)):
        if right.is_zero:
            raise ToolError("division by zero")
        return sp.Mod(left, right) if isinstance(op, ast.Mod) else sp.floor(left / right)
    raise ToolError(f"operator {type(op).__name__} is not supported; use + - * / ** % //")


class _Builder:
    """Walks a parsed expression, refusing anything off the whitelist, and builds its sympy value."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.functions = _function_table()
        sp = _sympy()
        self.constants = {"pi": sp.pi, "E": sp.E, "e": sp.E, "I": sp.I}

    def build(self, node: ast.AST) -> Any:
        return _checked(self._build(node))

    def _build(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return _literal(node, self.source)
        if isinstance(node, ast.Name):
            if node.id in self.constants:
                return self.constants[node.id]
            if node.id in self.functions:
                raise ToolError(f"{node.id} is a function: call it, e.g. {node.id}(2)")
            raise ToolError(f"unknown name {node.id!r}; constants are {', '.join(CONSTANTS)}")
        if isinstance(node, ast.UnaryOp):
            operand = self.build(node.operand)
            if isinstance(node.op, ast.USub):
                return -operand
            if isinstance(node.op, ast.UAdd):
                return operand
            raise ToolError(f"unary operator {type(node.op).__name__} is not supported; use + or -")
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY_NAMES:
                raise ToolError(f"operator {type(node.op).__name__} is not supported; use + - * / ** % //")
            return _binary(node.op, self.build(node.left), self.build(node.right))
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Attribute):
            raise ToolError("attribute access ('.') is not allowed")
        if isinstance(node, ast.Subscript):
            raise ToolError("indexing ('[]') is not allowed")
        raise ToolError(f"{type(node).__name__} syntax is not allowed in an arithmetic expression")

    def _call(self, node: ast.Call) -> Any:
        if isinstance(node.func, ast.Attribute):
            raise ToolError("attribute access ('.') is not allowed")
        if not isinstance(node.func, ast.Name):
            raise ToolError("only the calculator's named functions can be called")
        name = node.func.id
        if name not in self.functions:
            raise ToolError(f"unknown function {name!r}; available: {', '.join(FUNCTIONS)}")
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise ToolError(f"{name}() takes positional arguments only")
        args = [self.build(arg) for arg in node.args]
        try:
            return self.functions[name](*args)
        except TypeError as exc:
            raise ToolError(f"wrong number of arguments for {name}(): {exc}") from None


def _format_number(value: Any) -> str:
    import mpmath

    return mpmath.nstr(value, APPROX_DIGITS, strip_zeros=True, min_fixed=-4, max_fixed=APPROX_DIGITS)


def _approximation(value: Any) -> str | None:
    """Decimal approximation with 15 significant digits, or None if not a plain number."""
    import mpmath

    if not value.is_number:
        return None
    approx = _to_mpmath(value, APPROX_DIGITS * 4)
    if isinstance(approx, mpmath.mpc):
        real, imag = approx.real, approx.imag
        if imag == 0:
            return _format_number(real)
        imag_text = _format_number(abs(imag))
        if real == 0:
            return f"{'-' if imag < 0 else ''}{imag_text}*I"
        return f"{_format_number(real)} {'-' if imag < 0 else '+'} {imag_text}*I"
    return _format_number(approx)


def _depth(tree: ast.AST) -> int:
    """Nesting depth of a syntax tree (iterative: the point is to refuse trees too deep to recurse)."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def evaluate_expression(expression: str) -> str:
    """Exact value and decimal approximation of ``expression``, e.g. ``'7/3 ≈ 2.33333333333333'``.

    Raises :class:`ToolError` for anything off the whitelist, undefined results and results out of
    range.
    """
    text = expression.strip()
    for old, new in _REPLACEMENTS.items():
        text = text.replace(old, new)
    if not text:
        raise ToolError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is {len(text)} characters; the limit is {MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        detail = getattr(exc, "msg", None) or str(exc)
        raise ToolError(f"cannot parse {expression!r}: {detail}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ToolError(f"expression has too many parts (more than {MAX_NODES} syntax nodes)")
    if _depth(tree) > MAX_DEPTH:
        raise ToolError(f"expression is nested too deeply (more than {MAX_DEPTH} levels)")
    try:
        value = _Builder(text).build(tree.body)
    except (ValueError, ArithmeticError, RecursionError) as exc:
        # sympy's own limits (precision, Python's int-to-str digit limit inside its printers).
        raise ToolError(f"cannot evaluate {expression!r}: {type(exc).__name__}: {str(exc)[:200]}") from None
    sp = _sympy()
    if value.is_Integer and abs(value) < 10**APPROX_DIGITS:
        return str(value)
    approx = _approximation(value)
    bits = _exact_bits(value)
    if value.has(sp.Float) or (bits is not None and bits > MAX_EXACT_BITS):
        return f"≈ {approx}"
    exact = sp.sstr(value)
    if approx is None or exact == approx:
        return exact
    if len(exact) > MAX_EXACT_CHARS:
        return f"≈ {approx} (the exact value is {len(exact)} characters long; not shown)"
    return f"{exact} ≈ {approx}"


@tool(
    name="calculator",
    description=(
        "Evaluate an arithmetic expression exactly (fractions, roots, pi stay exact) and give a "
        "decimal approximation, e.g. '7/3' -> '7/3 ≈ 2.33333333333333'."
    ),
    args=CalculatorArgs,
)
def calculator(args: CalculatorArgs, ctx: ToolContext) -> str:
    """Run the calculator on ``args.expression`` (the context is unused: no resources needed)."""
    return evaluate_expression(args.expression)
