"""``numeric``: a number within tolerance of the gold, optionally with a unit converted by pint.

The final answer (``\\boxed{}``, ``Answer:`` line or short response) is read as ``<number> [unit]``:

- numbers: ``-12``, ``1,234.5`` and ``1{,}234.5`` (thousands separators), ``6.02e23``, ``6.02 \\times 10^{23}``,
  ``6.02 \\cdot 10^23``, ``10^{-3}``, ``\\frac{3}{4}``, ``3/4``; a leading ``x =``, ``\\approx`` or ``~`` is dropped;
- units: plain (``km``, ``m/s^2``, ``kg*m^2/s^2``, ``°C``, ``%``) or LaTeX (``\\text{m}``, ``\\mathrm{m\\,s^{-2}}``,
  ``\\frac{m}{s}``, ``^\\circ C``, ``\\%``, ``\\mu m``, ``\\Omega``).

When that finds no answer, or none that starts with a number, the response is read in Math-Verify's extraction
order instead (``extract.loose_answer_candidates``: ``final answer ... is X``, then ``answer ... X``, then the
rightmost math environment or bare number) and the first candidate that reads as a number is the answer; a unit is
the longest run of its next words pint reads (``"18 cm behind the lens"`` -> 18 cm).

Tolerance is numpy's ``isclose`` with the gold as reference: ``|answer - gold| <= atol + rtol * |gold|``, in the
reference unit. The reference unit is ``units`` when set, else the unit written in the gold (``"3200 m"``), else
none. With a reference unit, the answer must carry a unit of the same dimension ("3.2 km" equals "3200 m"; a bare
number is "no units", seconds for a length is "wrong units"). Without one, numbers are compared as written and a
unit in the answer is ignored (``"45%"`` reads as 45, not 0.45: use ``units: percent`` or the math verifier for
that).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from pydantic import Field, field_validator

from amrsd_envs.verifiers.base import (
    NO_ANSWER_FEEDBACK,
    NOT_EQUAL_FEEDBACK,
    BuiltinVerifier,
    Verification,
    VerifierOptions,
)
from amrsd_envs.verifiers.extract import clean_answer, extract_answer, find_last_boxed, loose_answer_candidates

MAX_NUMERIC_ANSWER_CHARS = 1000
MAX_UNIT_CHARS = 64
# Longest response the Math-Verify-ordered fallback scans (its patterns are bounded, so this only caps the work).
MAX_LOOSE_RESPONSE_CHARS = 200_000
# Candidates the fallback reads at most before giving up (a response full of unreadable numbers costs no more).
MAX_LOOSE_CANDIDATES = 50


@lru_cache(maxsize=1)
def unit_registry() -> Any:
    """The shared pint registry (built once, on first use: pint costs ~0.1 s to set up)."""
    import pint

    return pint.UnitRegistry(autoconvert_offset_to_baseunit=True)


# --- parsing ---------------------------------------------------------------------------------------------------

_MINUS = str.maketrans({"−": "-", "–": "-", "—": "-", "\u2009": " ", "\u202f": " ", "\xa0": " "})
_TEXT_OPEN = re.compile(r"\\(?:text|textrm|mathrm|rm|mathit|operatorname|mbox|textnormal|unit|si|SI)\s*\{")
_NUM_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([+-]?[\d.,]+)\s*\}\s*\{\s*([+-]?[\d.,]+)\s*\}")
_FLAT_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_TIMES_TEN = re.compile(
    r"\s*(?:\\times|\\cdot|×|·|\*|x)\s*10\s*(?:\^|\*\*)\s*\{?\s*\(?\s*([+-]?\s*\d{1,4})\s*\)?\s*\}?"
)
_BARE_TEN = re.compile(r"^10\s*(?:\^|\*\*)\s*\{?\s*\(?\s*([+-]?\s*\d{1,4})\s*\)?\s*\}?")
_PREFIX = re.compile(r"^(?:(?:[A-Za-z][\w]*|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=\s*|\\approx\s*|≈\s*|~\s*|\\sim\s*)+")
_NUMBER = re.compile(
    r"(?P<sign>[+-]?)\s*(?P<mant>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:\s*[eE]\s*(?P<exp>[+-]?\d+))?"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d*)?))?"
)
_LATEX_SYMBOLS = (
    ("{,}", ","),  # LaTeX thousands separator: 1{,}000
    ("^\\circ", "°"),
    ("^{\\circ}", "°"),
    ("\\circ", "°"),
    ("\\degree", "°"),
    ("\\%", "%"),
    ("\\mu", "µ"),
    ("\\Omega", "Ω"),
    ("\\cdot", "*"),
    ("\\times", "*"),
    ("\\,", " "),
    ("\\;", " "),
    ("\\:", " "),
    ("\\!", ""),
    ("\\ ", " "),
    ("~", " "),
)
# Two power operators with only a number between them (m^9^9^9): pint would evaluate the tower as a Python int.
_DEGREES = re.compile(r"°\s*([CF])\b")
_POWER_TOWER = re.compile(r"(?:\^|\*\*)\s*[-+]?\s*\(?\s*[\d.]+\s*\)?\s*(?:\^|\*\*)")
_LONG_NUMBER = re.compile(r"\d{5,}")


@dataclass(frozen=True)
class NumberWithUnit:
    """A parsed answer: ``value`` and the unit text after it (``None`` when there is none)."""

    value: float
    unit: str | None


def _unwrap_text_commands(s: str) -> str:
    """``\\mathrm{m\\,s^{-2}}`` -> ``m\\,s^{-2}`` (balanced braces; ``\\SI{3}{m}`` -> ``3 m``). Linear-ish: each
    pass removes one command, and answers are capped in length before they get here."""
    while True:
        m = _TEXT_OPEN.search(s)
        if m is None:
            return s
        depth, i = 1, m.end()
        while i < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[i], 0)
            i += 1
        if depth:  # unbalanced: drop the command name and its brace, keep the rest
            s = s[: m.start()] + s[m.end() :]
        else:
            s = s[: m.start()] + " " + s[m.end() : i - 1] + " " + s[i:]


def _latex_to_plain(s: str) -> str:
    s = s.translate(_MINUS)
    s = _unwrap_text_commands(s)
    s = _NUM_FRAC.sub(r"\1/\2", s)
    s = _TIMES_TEN.sub(lambda m: "e" + m.group(1).replace(" ", ""), s)
    for old, new in _LATEX_SYMBOLS:
        s = s.replace(old, new)
    return s.strip()


def _unit_to_plain(unit: str) -> str:
    for _ in range(3):
        unit = _FLAT_FRAC.sub(r"(\1)/(\2)", unit)
    unit = re.sub(r"\^\s*\{([^{}]*)\}", r"^(\1)", unit)
    unit = unit.replace("{", "").replace("}", "").replace("\\", "")
    unit = _DEGREES.sub(lambda m: "deg" + m.group(1), unit)
    return re.sub(r"\s+", " ", unit).strip(" .")


def parse_number_with_unit(text: str) -> NumberWithUnit | None:
    """``"6.02 \\times 10^{23} \\text{mol}^{-1}"`` -> ``NumberWithUnit(6.02e23, "mol^(-1)")``; ``None`` when the
    text does not start with a number."""
    s = _latex_to_plain(clean_answer(text))
    s = _PREFIX.sub("", s).strip()
    m = _BARE_TEN.match(s)
    if m:
        s = "1e" + m.group(1).replace(" ", "") + s[m.end() :]
    m = _NUMBER.match(s)
    if m is None:
        return None
    mant = m.group("mant").replace(",", "")
    exp = m.group("exp")
    try:
        value = float(mant + (f"e{exp}" if exp else ""))
        if m.group("den") is not None:
            value = value / float(m.group("den"))
    except (ValueError, ZeroDivisionError):
        return None
    if m.group("sign") == "-":
        value = -value
    rest = _unit_to_plain(s[m.end() :])
    return NumberWithUnit(value, rest or None)


def parse_unit(text: str) -> Any:
    """pint units for ``text``, or ``None`` when pint cannot read it (or it is too long or an exponent tower)."""
    if len(text) > MAX_UNIT_CHARS or _POWER_TOWER.search(text) or _LONG_NUMBER.search(text):
        return None
    ureg = unit_registry()
    try:
        return ureg.parse_units(text)
    except Exception:  # pint raises a zoo (UndefinedUnitError, DefinitionSyntaxError, TokenError, TypeError, ...)
        return None


def read_loose_candidate(text: str) -> NumberWithUnit | None:
    """A fallback candidate (``"18 cm behind the lens"``, ``"9.81 \\mathrm{m/s^2}"``) as a number and unit: the
    unit is the longest run of its first three words that pint reads (``cm``), or none."""
    answer = parse_number_with_unit(text)
    if answer is None or answer.unit is None or parse_unit(answer.unit) is not None:
        return answer
    words = answer.unit.split()[:3]
    for n in range(len(words) - 1, 0, -1):
        if parse_unit(" ".join(words[:n])) is not None:
            return NumberWithUnit(answer.value, " ".join(words[:n]))
    return NumberWithUnit(answer.value, None)


def loose_number(response: str) -> tuple[str, NumberWithUnit] | None:
    """The first Math-Verify-ordered candidate (``loose_answer_candidates``) that reads as a number, or ``None``."""
    if len(response) > MAX_LOOSE_RESPONSE_CHARS:
        return None
    for candidate in loose_answer_candidates(response)[:MAX_LOOSE_CANDIDATES]:
        if len(candidate) <= MAX_NUMERIC_ANSWER_CHARS:
            answer = read_loose_candidate(candidate)
            if answer is not None:
                return candidate, answer
    return None


# --- describing a dimension in words (feedback must not contain digits: golds are numbers) ----------------------

_NAMED_DIMENSIONS = (
    ("dimensionless number", "dimensionless"),
    ("length", "m"),
    ("mass", "kg"),
    ("time", "s"),
    ("temperature", "K"),
    ("amount of substance", "mol"),
    ("electric current", "A"),
    ("luminous intensity", "cd"),
    ("area", "m^2"),
    ("volume", "m^3"),
    ("speed", "m/s"),
    ("acceleration", "m/s^2"),
    ("force", "N"),
    ("energy", "J"),
    ("power", "W"),
    ("pressure", "Pa"),
    ("frequency", "Hz"),
    ("density", "kg/m^3"),
    ("momentum", "kg*m/s"),
    ("electric charge", "C"),
    ("voltage", "V"),
    ("resistance", "ohm"),
    ("capacitance", "F"),
    ("magnetic field", "T"),
    ("concentration", "mol/L"),
    ("molar mass", "g/mol"),
)
_POWER_WORDS = {1: "", 2: " squared", 3: " cubed", 4: " to the fourth", 5: " to the fifth", 6: " to the sixth"}


@lru_cache(maxsize=1)
def _dimension_names() -> dict[frozenset[tuple[str, float]], str]:
    ureg = unit_registry()
    return {frozenset(dict(ureg.parse_units(u).dimensionality).items()): name for name, u in _NAMED_DIMENSIONS}


def describe_dimension(units: Any) -> str:
    """``meter / second`` -> ``"a speed"``; unnamed ones in words (``"a mass per length to the fourth"``)."""
    dims = dict(units.dimensionality)
    name = _dimension_names().get(frozenset(dims.items()))
    if name is None:

        def words(items: list[tuple[str, float]]) -> str:
            return " ".join(
                k.strip("[]") + _POWER_WORDS.get(int(abs(v)) if float(v).is_integer() else 0, " to a power")
                for k, v in items
            )

        num = words([(k, v) for k, v in dims.items() if v > 0])
        den = words([(k, v) for k, v in dims.items() if v < 0])
        name = f"{num or 'one'} per {den}" if den else num
    article = "an" if name[0] in "aeiou" else "a"
    return f"{article} {name}"


def _unit_symbol(units: Any) -> str:
    symbol = f"{units:~}"
    return "" if re.search(r"\d", symbol) else symbol


# --- the verifier ----------------------------------------------------------------------------------------------


class NumericOptions(VerifierOptions):
    """Options of the ``numeric`` verifier."""

    rtol: float = Field(
        1e-4, ge=0, description="Relative tolerance: |answer - gold| <= atol + rtol * |gold| (gold as reference)."
    )
    atol: float = Field(0.0, ge=0, description="Absolute tolerance, in the reference unit.")
    units: str | None = Field(
        None,
        description="The gold's unit (a pint unit, e.g. 'm', 'km/h', 'degC'). When set (or when the gold is written "
        "with a unit), the answer must carry a unit of the same dimension and is converted before comparing.",
    )

    @field_validator("units")
    @classmethod
    def _pint_unit(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if parse_unit(_unit_to_plain(_latex_to_plain(v))) is None:
            raise ValueError(f"units {v!r} is not a unit pint knows; write e.g. 'm', 'm/s^2', 'kJ/mol', 'degC'")
        return v


class NumericVerifier(BuiltinVerifier):
    """A number (with an optional unit) within ``rtol``/``atol`` of the gold."""

    name: ClassVar[str] = "numeric"
    options_model: ClassVar[type[VerifierOptions]] = NumericOptions

    def check(self, gold: str, response: str, options: NumericOptions) -> Verification:  # type: ignore[override]
        ref_value, ref_unit = self._reference(gold, options)
        extracted = extract_answer(response)
        if extracted is not None and len(extracted) > MAX_NUMERIC_ANSWER_CHARS:
            return Verification.too_long(extracted, "the numeric answer limit")
        answer = parse_number_with_unit(extracted) if extracted is not None else None
        if answer is None:
            # No final answer, or none that starts with a number ("The focal length is 18 cm"): read the response
            # in Math-Verify's extraction order instead, taking its first readable candidate (one pick, never
            # "whichever candidate matches").
            loose = loose_number(response)
            if loose is None:
                if extracted is None:
                    return Verification.wrong(None, NO_ANSWER_FEEDBACK)
                return Verification.wrong(extracted, "could not read a number in the final answer")
            extracted, answer = loose

        value = answer.value
        # Without a reference unit, words after the number are tolerated ("5 apples") but a second number is not
        # ("3, 4, 5"): only the first would be read, and listing candidates must not pay.
        if (
            ref_unit is None
            and answer.unit is not None
            and re.search(r"\d", answer.unit)
            and parse_unit(answer.unit) is None
        ):
            return Verification.wrong(extracted, "the final answer must be a single number")
        if ref_unit is not None:
            expected = describe_dimension(ref_unit)
            if answer.unit is None:
                return Verification.wrong(extracted, f"no units: expected {expected}")
            units = parse_unit(answer.unit)
            if units is None:
                return Verification.wrong(extracted, f"wrong units: could not read the unit (expected {expected})")
            if units.dimensionality != ref_unit.dimensionality:
                symbol = _unit_symbol(units)
                got = f"{symbol} ({describe_dimension(units)})" if symbol else describe_dimension(units)
                return Verification.wrong(extracted, f"wrong units: got {got}, expected {expected}")
            try:
                value = float(unit_registry().Quantity(value, units).to(ref_unit).magnitude)
            except Exception:  # an offset-unit corner pint refuses; not the model's fault to crash us
                return Verification.wrong(extracted, f"wrong units: could not convert the unit to {expected}")

        if math.isfinite(value) and abs(value - ref_value) <= options.atol + options.rtol * abs(ref_value):
            return Verification.right(extracted)
        return Verification.wrong(extracted, f"{NOT_EQUAL_FEEDBACK} (outside the tolerance)")

    @staticmethod
    def _reference(gold: str, options: NumericOptions) -> tuple[float, Any]:
        """The gold's value in the reference unit, and that unit (``None``: compare plain numbers)."""
        parsed = parse_number_with_unit(find_last_boxed(gold) or gold)
        if parsed is None or not math.isfinite(parsed.value):
            raise ValueError(f"numeric verifier: the gold {gold!r} is not a number (optionally with a unit)")
        option_unit = parse_unit(_unit_to_plain(_latex_to_plain(options.units))) if options.units else None
        gold_unit = None
        if parsed.unit is not None:
            gold_unit = parse_unit(parsed.unit)
            if gold_unit is None:
                raise ValueError(f"numeric verifier: pint cannot read the unit {parsed.unit!r} of the gold {gold!r}")
        if gold_unit is None:
            return parsed.value, option_unit
        if option_unit is None:
            return parsed.value, gold_unit
        if gold_unit.dimensionality != option_unit.dimensionality:
            raise ValueError(
                f"numeric verifier: the gold {gold!r} has unit {parsed.unit!r} but units={options.units!r} is a "
                "different dimension; make them agree"
            )
        converted = unit_registry().Quantity(parsed.value, gold_unit).to(option_unit).magnitude
        return float(converted), option_unit
