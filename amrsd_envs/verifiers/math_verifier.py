"""``math``: symbolic equivalence of the final answer and the gold, by Math-Verify, in a worker process.

Semantics are Math-Verify's (``verify(parse(gold), parse(answer))``, gold first: the relation is not symmetric),
with both strings given as LaTeX (wrapped in ``$...$``; a plain expression using ``**`` is passed as is so
Math-Verify's expression parser reads it). What that means for common golds:

- ``\\frac{3}{4}`` accepts ``3/4``, ``\\dfrac34``, ``0.75``; a decimal is compared after rounding both sides to
  ``float_rounding`` (6) places, so ``0.333333`` matches ``\\frac{1}{3}`` but ``0.33`` and ``0.3333`` do not;
- ``\\{-3, 2\\}`` accepts ``2, -3``, ``\\{2, -3\\}``, ``x = -3, x = 2`` (sets ignore order) and, by
  Math-Verify's choice, the tuple ``(2, -3)``; a single element does not match;
- ``x^{2} + 2 x`` accepts ``x(x+2)``, ``x^2+2x``; ``(x - 1)(x + 2)`` accepts ``x^2+x-2``;
- ``5`` accepts ``x = 5`` (Math-Verify takes the right-hand side of an assignment) and ``5.0``;
- ``10\\%`` accepts ``10`` and ``0.1``.

Cheap paths that skip the worker round-trip (``fast_verdict``): equal strings after a conservative LaTeX
normalisation (``\\dfrac`` -> ``\\frac``, ``\\left``/``\\right`` and thin spaces dropped, spaces around operators
dropped) are correct; two plain numbers (integers, decimals, ``a/b``, ``\\frac{a}{b}``) are compared with
``Fraction`` where the outcome is certain to be Math-Verify's (a test checks the two agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

from pydantic import Field

from amrsd_envs.verifiers.base import (
    NO_ANSWER_FEEDBACK,
    NOT_EQUAL_FEEDBACK,
    BuiltinVerifier,
    Verification,
    VerifierOptions,
)
from amrsd_envs.verifiers.extract import clean_answer, extract_answer, find_last_boxed
from amrsd_envs.verifiers.math_pool import get_pool

TIMEOUT_FEEDBACK = "comparison timed out"


class MathOptions(VerifierOptions):
    """Options of the ``math`` verifier."""

    timeout_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Seconds one Math-Verify comparison may take; past it the worker process is killed and the "
        "answer is marked incorrect ('comparison timed out').",
    )
    max_answer_chars: int = Field(
        10_000,
        ge=1,
        description="Longest extracted answer (characters) that is compared at all; longer is incorrect "
        "('answer too long').",
    )
    float_rounding: int = Field(
        6,
        ge=0,
        le=20,
        description="Decimal places Math-Verify rounds both sides to when either is a decimal number.",
    )
    strict: bool = Field(
        True,
        description="Math-Verify strict mode: variable names must match (x+1 is not y+1). False matches variables "
        "by position.",
    )


_FRAC = re.compile(r"\\[dt]frac(?![a-zA-Z])")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_THIN_SPACE = re.compile(r"\\[,;:! ]")
_SPACE_AROUND_OP = re.compile(r"\s*([=+\-*/^(){}\[\],<>])\s*")
_WS = re.compile(r"\s+")
# Plain numbers only (no spaces, separators or exponents: those go to Math-Verify); 60 digits is plenty.
_SIMPLE = re.compile(
    r"(?P<sign>[+-]?)(?:(?P<dec>\d{1,60}(?:\.\d{1,60})?|\.\d{1,60})|(?P<num>\d{1,60})/(?P<den>\d{1,60})"
    r"|\\frac\{(?P<fnum>\d{1,60})\}\{(?P<fden>\d{1,60})\})"
)


def normalize_latex(s: str) -> str:
    """A conservative normal form: two strings with the same normal form are the same mathematical answer."""
    s = clean_answer(s)
    s = _FRAC.sub(r"\\frac", s)
    s = _LEFT_RIGHT.sub("", s)
    s = _THIN_SPACE.sub("", s)
    s = _WS.sub(" ", s).strip()
    return _SPACE_AROUND_OP.sub(r"\1", s)


@dataclass(frozen=True)
class SimpleNumber:
    """A plain number read without sympy: its exact value and whether it was written as a decimal."""

    value: Fraction
    decimal: bool


def simple_number(s: str) -> SimpleNumber | None:
    """``-12``, ``0.75``, ``3/4``, ``\\frac{3}{4}``, ``-\\frac{3}{4}`` (in normal form) -> a ``SimpleNumber``; else
    ``None``."""
    m = _SIMPLE.fullmatch(s)
    if m is None:
        return None
    sign = -1 if m.group("sign") == "-" else 1
    if m.group("dec") is not None:
        return SimpleNumber(sign * Fraction(m.group("dec")), "." in m.group("dec"))
    num, den = m.group("num") or m.group("fnum"), m.group("den") or m.group("fden")
    if int(den) == 0:
        return None
    return SimpleNumber(sign * Fraction(int(num), int(den)), False)


def fast_verdict(gold_text: str, answer: str, float_rounding: int = 6) -> bool | None:
    """The verdict without Math-Verify, only where it is certain to agree with Math-Verify; ``None`` otherwise.

    True for equal normal forms. For two plain numbers: exact rationals compare exactly (as Math-Verify compares
    Rationals); with a decimal on either side Math-Verify rounds both to ``float_rounding`` places, so equal values
    are equal and values further apart than ``10**-float_rounding`` are not (rounding moves each by at most half
    that); closer pairs are left to Math-Verify.
    """
    norm_gold, norm_answer = normalize_latex(gold_text), normalize_latex(answer)
    if norm_gold == norm_answer:
        return True
    a, b = simple_number(norm_gold), simple_number(norm_answer)
    if a is None or b is None:
        return None
    if a.value == b.value:
        return True
    if not (a.decimal or b.decimal):
        return False
    if abs(a.value - b.value) > Fraction(1, 10**float_rounding):
        return False
    return None


def prepare_gold(gold: str) -> str:
    """The gold as the verifier compares it: a boxed or ``$``-delimited gold is unwrapped."""
    return clean_answer(find_last_boxed(gold) or gold)


def for_math_verify(answer: str) -> str:
    """The string handed to Math-Verify's ``parse``: LaTeX in ``$...$``; a plain ``**`` expression as is."""
    if "**" in answer and "\\" not in answer:
        return answer
    return f"${answer}$"


class MathVerifier(BuiltinVerifier):
    """Final answer (``\\boxed{}``, ``Answer:`` line or short response) equivalent to the gold by Math-Verify."""

    name: ClassVar[str] = "math"
    options_model: ClassVar[type[VerifierOptions]] = MathOptions

    def check(self, gold: str, response: str, options: MathOptions) -> Verification:  # type: ignore[override]
        gold_text = prepare_gold(gold)
        if not gold_text:
            raise ValueError("math verifier: the gold answer is empty; give the reference answer as LaTeX")
        extracted = extract_answer(response)
        if extracted is None:
            return Verification.wrong(None, NO_ANSWER_FEEDBACK)
        if len(extracted) > options.max_answer_chars:
            return Verification.too_long(extracted, "max_answer_chars")

        fast = fast_verdict(gold_text, extracted, options.float_rounding)
        if fast is not None:
            return Verification.right(extracted) if fast else Verification.wrong(extracted, NOT_EQUAL_FEEDBACK)

        result = get_pool().compare(
            for_math_verify(gold_text),
            for_math_verify(extracted),
            timeout_s=options.timeout_s,
            float_rounding=options.float_rounding,
            strict=options.strict,
        )
        if result.status == "equal":
            return Verification.right(extracted)
        if result.status == "not_equal":
            return Verification.wrong(extracted, NOT_EQUAL_FEEDBACK)
        if result.status == "timeout":
            return Verification.wrong(extracted, TIMEOUT_FEEDBACK)
        if result.status == "answer_unparsed":
            return Verification.wrong(extracted, "could not read the final answer as a math expression")
        if result.status == "gold_unparsed":
            raise ValueError(f"math verifier: {result.detail}; write the gold as a LaTeX or plain expression")
        # "error" / "worker_died": Math-Verify or sympy failed on this input; the answer is not credited.
        return Verification.wrong(extracted, "comparison failed: the answer could not be evaluated")
