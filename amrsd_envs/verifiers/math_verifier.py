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

Extraction order (one pick per response; a response never gets one comparison per candidate):

1. the project's extraction (``extract.py``): the last complete ``\\boxed{}``, else the last ``Answer:`` line, else
   a short one-line response. ``timeout_s`` / ``max_answer_chars`` / the cheap paths below apply to it;
2. Math-Verify's own ``parse`` of the whole response, with its default extraction configs (``LatexExtractionConfig``
   + ``ExprExtractionConfig``: ``final answer ... is X`` and ``\\boxed{}`` first, then ``answer ... X``, then the
   rightmost math environment or number; its single pick, as ``verify(parse(gold), parse(response))`` would judge),
   in a worker under the same ``timeout_s``. It runs only when step 1 found nothing, or found an answer Math-Verify
   could not read or evaluate, or found prose that did not match (``x = 5, so the value is 5``; ``The set is
   $\\{1, 2\\}$``). A readable wrong answer that is boxed, or is a bare expression, is final (no second reading,
   so a response hedging ``\\boxed{4}`` ... ``the final answer is 5`` is judged on its box), and so is a timeout.
   Off with ``parse_whole_response: false``; skipped for responses over ``whole_response_max_chars``.

So display math after ``Answer:`` on its own line, ``x = 5`` in a sentence, ``$x > 3$`` in a sentence (gold
``x > 3``), a matrix written as ``\\begin{array}``/``pmatrix`` in ``$...$``, ``$1{,}000$``, ``0.750``, a LaTeX set
in a sentence, and an interval in decimals (equal after rounding to ``float_rounding`` places) are read as
Math-Verify reads them. ``Verification.extracted`` is the answer that was judged: step 1's string, or Math-Verify's
extracted string (cleaned) when step 2 decided; feedback is one of a few fixed sentences and never quotes the gold.

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
    TRUNCATED_EXTRACT_CHARS,
    BuiltinVerifier,
    Verification,
    VerifierOptions,
)
from amrsd_envs.verifiers.extract import AnswerSource, clean_answer, extract_answer_with_source, find_last_boxed
from amrsd_envs.verifiers.math_pool import CompareResult, get_pool

TIMEOUT_FEEDBACK = "comparison timed out"
UNPARSED_FEEDBACK = "could not read the final answer as a math expression"
FAILED_FEEDBACK = "comparison failed: the answer could not be evaluated"


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
    parse_whole_response: bool = Field(
        True,
        description="When no final answer is found, or the one found is prose or unreadable, let Math-Verify's own "
        "extraction (its default LaTeX + expression configs) read the whole response, as Math-Verify would.",
    )
    whole_response_max_chars: int = Field(
        50_000,
        ge=0,
        description="Longest response (characters) Math-Verify's own extraction reads when parse_whole_response "
        "is on; longer responses are judged on the project's extraction alone (Math-Verify's regexes are "
        "superlinear on degenerate text).",
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


# A word of three or more letters that is not a LaTeX command name (\infty, \sqrt); \text{...} is removed first.
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_TEXT_GROUP = re.compile(r"\\(?:text|textrm|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{[^{}]*\}")


def is_definite(answer: str, source: AnswerSource) -> bool:
    """Whether an extracted answer states one answer plainly, so that a readable wrong one stays wrong.

    A boxed answer is definite; so is an ``Answer:`` line or a short response that is a bare expression (no word of
    three or more letters outside LaTeX command names and ``\\text{...}``). Anything else (``x = 5, so the value is
    5``, ``The set is $\\{1, 2\\}$``) is prose the project's extraction only approximates, and is handed to
    Math-Verify's own extraction when it does not match.
    """
    if source == "boxed":
        return True
    return _WORD.search(_TEXT_GROUP.sub(" ", answer)) is None


def prepare_gold(gold: str) -> str:
    """The gold as the verifier compares it: a boxed or ``$``-delimited gold is unwrapped."""
    return clean_answer(find_last_boxed(gold) or gold)


def for_math_verify(answer: str) -> str:
    """The string handed to Math-Verify's ``parse``: LaTeX in ``$...$``; a plain ``**`` expression as is."""
    if "**" in answer and "\\" not in answer:
        return answer
    return f"${answer}$"


class MathVerifier(BuiltinVerifier):
    """Final answer (``\\boxed{}``, ``Answer:`` line or short response, else Math-Verify's own extraction of the whole
    response) equivalent to the gold by Math-Verify."""

    name: ClassVar[str] = "math"
    options_model: ClassVar[type[VerifierOptions]] = MathOptions

    def check(self, gold: str, response: str, options: MathOptions) -> Verification:  # type: ignore[override]
        gold_text = prepare_gold(gold)
        if not gold_text:
            raise ValueError("math verifier: the gold answer is empty; give the reference answer as LaTeX")
        found = extract_answer_with_source(response)
        if found is None:
            return self._whole_response(gold_text, response, options, None)
        extracted, source = found
        if len(extracted) > options.max_answer_chars:
            return Verification.too_long(extracted, "max_answer_chars")

        fast = fast_verdict(gold_text, extracted, options.float_rounding)
        if fast is not None:  # plain numbers: definite either way
            return Verification.right(extracted) if fast else Verification.wrong(extracted, NOT_EQUAL_FEEDBACK)

        result = self._compare(gold_text, for_math_verify(extracted), options)
        if result.status == "equal":
            return Verification.right(extracted)
        if result.status == "gold_unparsed":
            raise ValueError(f"math verifier: {result.detail}; write the gold as a LaTeX or plain expression")
        verdict = _verdict(extracted, result)
        # A timeout is final (a second comparison would double the worst case); so is a readable, plainly stated
        # wrong answer (a box, or a bare expression): giving it a second reading would credit hedged responses.
        if result.status == "timeout" or (result.status == "not_equal" and is_definite(extracted, source)):
            return verdict
        return self._whole_response(gold_text, response, options, verdict)

    @staticmethod
    def _compare(gold_text: str, answer: str, options: MathOptions) -> CompareResult:
        return get_pool().compare(
            for_math_verify(gold_text),
            answer,
            timeout_s=options.timeout_s,
            float_rounding=options.float_rounding,
            strict=options.strict,
        )

    def _whole_response(
        self, gold_text: str, response: str, options: MathOptions, verdict: Verification | None
    ) -> Verification:
        """Math-Verify's own reading of the whole response (its extraction order, its single pick); ``verdict`` is
        the project extraction's verdict, kept unless Math-Verify read an answer (right or wrong) from the response."""
        if not options.parse_whole_response or not response.strip() or len(response) > options.whole_response_max_chars:
            return verdict or Verification.wrong(None, NO_ANSWER_FEEDBACK)
        result = self._compare(gold_text, response, options)
        pick = _shorten(clean_answer(result.pick), options.max_answer_chars) or None
        if result.status == "equal":
            return Verification.right(pick)
        if result.status == "gold_unparsed":
            raise ValueError(f"math verifier: {result.detail}; write the gold as a LaTeX or plain expression")
        if verdict is not None and result.status != "not_equal":
            return verdict  # Math-Verify's reading says nothing better than the project's
        if result.status == "answer_unparsed" and not pick:
            return Verification.wrong(None, NO_ANSWER_FEEDBACK)
        return _verdict(pick, result)


def _shorten(text: str, limit: int) -> str:
    """Math-Verify's pick as reported in ``Verification.extracted``: over ``limit`` characters, only a prefix."""
    return text[:TRUNCATED_EXTRACT_CHARS] + " [truncated]" if len(text) > limit else text


def _verdict(extracted: str | None, result: CompareResult) -> Verification:
    """The incorrect verdict for a comparison that did not come out ``equal`` (feedback never quotes the gold)."""
    if result.status == "not_equal":
        return Verification.wrong(extracted, NOT_EQUAL_FEEDBACK)
    if result.status == "timeout":
        return Verification.wrong(extracted, TIMEOUT_FEEDBACK)
    if result.status == "answer_unparsed":
        return Verification.wrong(extracted, UNPARSED_FEEDBACK)
    # "error" / "worker_died": Math-Verify or sympy failed on this input; the answer is not credited.
    return Verification.wrong(extracted, FAILED_FEEDBACK)
