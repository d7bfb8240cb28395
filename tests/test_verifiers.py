"""Answer verifiers: real Math-Verify in real worker processes, real pint, no mocks.

Timing is measured only to bound hangs (a pathological answer must come back, well under 30 s) and to prove the
configured timeout is the one enforced; there are no speed assertions.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from amrsd_envs.verifiers import (
    VERIFIERS,
    UnknownVerifierError,
    Verification,
    VerifierOptions,
    VerifierRegistry,
    check,
    extract_answer,
    register_verifier,
)
from amrsd_envs.verifiers.math_pool import get_pool
from amrsd_envs.verifiers.math_verifier import MathVerifier, fast_verdict, for_math_verify

ROOT = Path(__file__).resolve().parents[1]
HANG_BOUND_S = 30.0
BUILTIN_KINDS = ("math", "numeric", "choice", "exact", "regex")


# --- extraction ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (r"so \boxed{3} and then \boxed{4}", "4"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\fbox{7}", "7"),
        (r"The roots are \boxed{\{-3, 2\}}.", r"\{-3, 2\}"),
        (r"\boxed{\boxed{5}}", "5"),
        (r"first \boxed{12} then a truncated \boxed{13", "12"),
        ("\\boxed{}\nAnswer: 9", "9"),
        ("Work...\nAnswer: 42\nmore text", "42"),
        ("Answer: 1\nFinal answer: $x^2$.", "x^2"),
        ("**Final Answer:** 17", "17"),
        ("**Answer**: (B)", "(B)"),
        ("answer: \\(\\frac{3}{4}\\)", "\\frac{3}{4}"),
        ("  42  ", "42"),
        ("$-7$", "-7"),
        ("x" * 41, None),
        ("short\nbut two lines", None),
        ("", None),
        ("Let me think about it for a while and never conclude anything at all.", None),
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    "response",
    [
        "x" * 1_000_000,
        "\\boxed{" * 200_000,
        "{" * 500_000 + "}" * 10,
        "Answer: " + " " * 1_000_000 + "x",
        "\\boxed{" + "{" * 300_000 + "}" * 300_001,
    ],
    ids=["plain", "open-boxes", "braces", "answer-spaces", "deep-box"],
)
def test_extract_answer_is_bounded_on_huge_inputs(response: str) -> None:
    t0 = time.monotonic()
    extract_answer(response)
    assert time.monotonic() - t0 < HANG_BOUND_S


def test_extract_answer_rejects_non_str() -> None:
    with pytest.raises(TypeError, match="str"):
        extract_answer(42)  # type: ignore[arg-type]


# --- math ------------------------------------------------------------------------------------------------------

MATH_EQUIVALENT = [
    (r"\frac{3}{4}", r"\boxed{3/4}"),
    (r"\frac{3}{4}", r"\boxed{0.75}"),
    (r"\frac{3}{4}", r"\boxed{\dfrac{3}{4}}"),
    (r"\frac{3}{4}", r"The answer is $\frac{6}{8}$."),
    (r"\frac{1}{3}", r"\boxed{0.333333}"),
    ("-2", r"\boxed{-2}"),
    ("-2", "Answer: -2.0"),
    ("-2", "-2"),
    ("5", r"\boxed{x = 5}"),
    (r"\{-3, 2\}", r"\boxed{\{2, -3\}}"),
    (r"\{-3, 2\}", r"\boxed{2, -3}"),
    (r"\{-3, 2\}", r"\boxed{x = -3 \text{ or } x = 2}"),
    (r"x^{2} + 2 x", r"\boxed{x(x+2)}"),
    (r"x^{2} + 2 x", r"\boxed{x^2+2x}"),
    (r"(x - 1)(x + 2)", r"\boxed{x^2 + x - 2}"),
    (r"(x - 1)(x + 2)", r"\boxed{(x+2)(x-1)}"),
    (r"\sqrt{2}", r"\boxed{\frac{2}{\sqrt{2}}}"),
    (r"2\pi", r"\boxed{6.283185}"),
    ("1000", r"\boxed{1,000}"),
    ("1024", r"\boxed{2^{10}}"),
    ("1024", "2**10"),
    (r"10\%", r"\boxed{0.1}"),
    ("(1, 2)", r"\boxed{(1,2)}"),
    ("[0, 1)", r"\boxed{[0, 1)}"),
    (r"$\frac{3}{4}$", r"\boxed{3/4}"),
    (r"\boxed{\frac{3}{4}}", r"\boxed{0.75}"),
]

MATH_NOT_EQUIVALENT = [
    (r"\frac{3}{4}", r"\boxed{4/3}"),
    (r"\frac{1}{3}", r"\boxed{0.33}"),
    (r"\frac{1}{3}", r"\boxed{0.3333}"),
    ("-2", r"\boxed{2}"),
    (r"\{-3, 2\}", r"\boxed{-3}"),
    (r"\{-3, 2\}", r"\boxed{\{-3, 2, 5\}}"),
    (r"x^{2} + 2 x", r"\boxed{x^2+2x+1}"),
    (r"(x - 1)(x + 2)", r"\boxed{(x+1)(x-2)}"),
    ("(1, 2)", r"\boxed{(2, 1)}"),
    ("[0, 1)", r"\boxed{(0, 1)}"),
    ("x + 1", r"\boxed{y + 1}"),
    ("7", r"\boxed{8}"),
    (r"\pi", r"\boxed{3.14}"),
]


@pytest.mark.parametrize(("gold", "response"), MATH_EQUIVALENT)
def test_math_equivalent(gold: str, response: str) -> None:
    v = check("math", gold, response)
    assert v.correct, v
    assert v.score == 1.0 and v.feedback == "correct"


@pytest.mark.parametrize(("gold", "response"), MATH_NOT_EQUIVALENT)
def test_math_not_equivalent(gold: str, response: str) -> None:
    v = check("math", gold, response)
    assert not v.correct, v
    assert v.score == 0.0
    assert v.feedback == "not equal to the reference"


@pytest.mark.parametrize("perm", list(itertools.permutations(["-3", "2", r"\frac{1}{2}", "7"])))
def test_math_set_order_does_not_matter(perm: tuple[str, ...]) -> None:
    gold = r"\{-3, 2, \frac{1}{2}, 7\}"
    assert check("math", gold, r"\boxed{\{" + ", ".join(perm) + r"\}}").correct
    assert check("math", gold, r"\boxed{" + ", ".join(perm) + "}").correct
    assert not check("math", gold, r"\boxed{\{" + ", ".join(perm[:3]) + r"\}}").correct


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(-50, 50), min_size=2, max_size=5, unique=True), st.randoms(use_true_random=False))
def test_math_sets_of_integers_any_order(values: list[int], rnd) -> None:
    shuffled = list(values)
    rnd.shuffle(shuffled)
    gold = r"\{" + ", ".join(map(str, values)) + r"\}"
    assert check("math", gold, r"\boxed{\{" + ", ".join(map(str, shuffled)) + r"\}}").correct


def test_math_no_answer_feedback() -> None:
    v = check("math", "4", "I am not sure what the answer is, it could be many things really.")
    assert not v.correct and v.extracted is None
    assert v.feedback == "no final answer found (expected \\boxed{...} or an 'Answer:' line)"


def test_math_answer_too_long_is_capped_and_truncated() -> None:
    v = check("math", "5", r"\boxed{" + "1" * 50 + "}", max_answer_chars=20)
    assert not v.correct and v.feedback.startswith("answer too long")
    huge = check("math", "5", r"\boxed{" + "1" * 20_000 + "}")
    assert huge.feedback.startswith("answer too long")
    assert huge.extracted is not None and len(huge.extracted) < 300  # a prefix, not 20 kB in logs


def test_math_float_rounding_option_reaches_math_verify() -> None:
    assert not check("math", r"\frac{1}{3}", r"\boxed{0.3333}").correct
    assert check("math", r"\frac{1}{3}", r"\boxed{0.3333}", float_rounding=4).correct


def test_math_strict_option_reaches_math_verify() -> None:
    assert not check("math", "x + 1", r"\boxed{y + 1}").correct
    assert check("math", "x + 1", r"\boxed{y + 1}", strict=False).correct


def test_math_empty_gold_is_a_spec_error() -> None:
    with pytest.raises(ValueError, match="gold answer is empty"):
        check("math", "  ", r"\boxed{1}")


def _render(value: Fraction, form: int, pad: int) -> str:
    """``value`` as an integer, a decimal (padded with zeros), ``a/b`` or ``\\frac{a}{b}`` (sign in front)."""
    sign, v = ("-" if value < 0 else ""), abs(value)
    if form == 0 and v.denominator == 1:
        return f"{sign}{v.numerator}"
    if form == 1 and 10**12 % v.denominator == 0:
        text = f"{Decimal(v.numerator) / Decimal(v.denominator):f}"
        return sign + (text + ("." if "." not in text else "") + "0" * pad if pad else text)
    if form == 2:
        return f"{sign}{v.numerator}/{v.denominator}"
    return sign + rf"\frac{{{v.numerator}}}{{{v.denominator}}}"


_VALUES = st.builds(Fraction, st.integers(-2000, 2000), st.sampled_from([1, 2, 3, 4, 5, 8, 16, 25, 125, 3000000]))
_NUDGES = st.sampled_from(
    [
        Fraction(0),
        Fraction(0),
        Fraction(1, 10**7),
        Fraction(-1, 10**6),
        Fraction(3, 10**6),
        Fraction(1, 1000),
        Fraction(1),
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_VALUES, _NUDGES, st.integers(0, 3), st.integers(0, 3), st.integers(0, 3))
def test_math_fast_path_agrees_with_math_verify(value: Fraction, nudge: Fraction, f1: int, f2: int, pad: int) -> None:
    gold, answer = _render(value, f1, 0), _render(value + nudge, f2, pad)
    fast = fast_verdict(gold, answer)
    if fast is None:
        return
    result = get_pool().compare(for_math_verify(gold), for_math_verify(answer), timeout_s=10)
    assert result.status in ("equal", "not_equal"), result
    assert fast == (result.status == "equal"), (gold, answer)


PATHOLOGICAL = [
    r"\boxed{10^{10^{10}}}",
    "9**9**9**9",
    r"\boxed{9^{9^{9^{9}}}}",
    r"\boxed{(x+1)^{100000}}",
    r"\boxed{" + "(" * 3000 + ")" * 3000 + "}",
    r"\boxed{" + "x" * 1_000_000 + "}",
    "y" * 1_000_000,
]


@pytest.mark.slow
@pytest.mark.parametrize("response", PATHOLOGICAL, ids=lambda r: r[:24])
def test_math_pathological_inputs_return_incorrect_in_bounded_time(response: str) -> None:
    t0 = time.monotonic()
    v = check("math", "5", response, timeout_s=2)
    assert time.monotonic() - t0 < HANG_BOUND_S
    assert not v.correct and v.score == 0.0
    assert v.feedback in {
        "comparison timed out",
        "not equal to the reference",
        "answer too long (over max_answer_chars)",
        "no final answer found (expected \\boxed{...} or an 'Answer:' line)",
    }, v.feedback


@pytest.mark.slow
@pytest.mark.parametrize("timeout_s", [1.0, 3.0])
def test_math_configured_timeout_is_the_one_enforced(timeout_s: float) -> None:
    t0 = time.monotonic()
    v = check("math", "5", r"\boxed{10^{10^{10}}}", timeout_s=timeout_s)
    elapsed = time.monotonic() - t0
    assert v.feedback == "comparison timed out"
    assert timeout_s <= elapsed < HANG_BOUND_S


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_math_timed_out_worker_is_killed_and_replaced() -> None:
    pool = get_pool()
    assert check("math", r"\frac{1}{2}", r"\boxed{0.5}").correct  # warm: at least one idle worker
    before = set(pool.worker_pids())
    killed = pool.killed
    assert not check("math", "5", r"\boxed{10^{10^{10}}}", timeout_s=1).correct
    assert pool.killed == killed + 1
    gone = before - set(pool.worker_pids())
    assert len(gone) == 1 and not _process_exists(gone.pop())
    assert len(pool.worker_pids()) >= 1  # the replacement is already there
    assert check("math", r"x^{2} + 2 x", r"\boxed{x(x+2)}").correct


def test_math_from_threads() -> None:
    results: list[Verification] = []
    errors: list[BaseException] = []

    def run(gold: str, response: str) -> None:
        try:
            results.append(check("math", gold, response))
        except BaseException as exc:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(exc)

    pairs = [(r"x^{2} + 2 x", r"\boxed{x(x+2)}"), (r"\frac{3}{4}", r"\boxed{0.75}")] * 3 + [("5", r"\boxed{6}")]
    threads = [threading.Thread(target=run, args=p) for p in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_BOUND_S)
    assert not errors
    assert sorted(v.correct for v in results) == [False] + [True] * 6


def test_math_timeout_from_a_thread() -> None:
    out: list[Verification] = []
    t = threading.Thread(target=lambda: out.append(check("math", "5", "9**9**9**9", timeout_s=1)))
    t.start()
    t.join(HANG_BOUND_S)
    assert out and out[0].feedback == "comparison timed out"


def test_import_starts_no_process_and_loads_neither_sympy_nor_pint() -> None:
    code = textwrap.dedent(
        """
        import sys
        import amrsd_envs.verifiers
        from amrsd_envs.verifiers import math_pool
        assert math_pool._pool is None
        assert "sympy" not in sys.modules and "pint" not in sys.modules, sorted(sys.modules)
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_math_works_from_a_script_without_main_guard(tmp_path: Path) -> None:
    # multiprocessing's spawn/forkserver would re-run this script in each worker; our workers must not.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from amrsd_envs.verifiers import check\nprint(check('math', r'x^{2} + 2 x', r'\\boxed{x(x+2)}').correct)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


# --- numeric ---------------------------------------------------------------------------------------------------

NUMERIC_EQUIVALENT = [
    ("3200 m", r"\boxed{3.2 \text{ km}}", {}),
    ("3200 m", "Answer: 3.2 km", {}),
    ("3200", "3.2 km", {"units": "m"}),
    ("3.2", r"\boxed{3200\,\mathrm{m}}", {"units": "km"}),
    ("9.81 m/s^2", r"Answer: \(9.81 \mathrm{m\,s^{-2}}\)", {}),
    ("9.81 m/s^2", r"\boxed{9.81 \frac{\text{m}}{\text{s}^2}}", {}),
    ("298.15 K", r"\boxed{25 ^\circ C}", {}),
    ("298.15 K", r"\boxed{25^{\circ}\text{C}}", {}),
    ("1.5 kJ", r"\boxed{1500 J}", {}),
    ("12 km/h", r"\boxed{3.333333 m/s}", {}),
    ("6.02e23", r"\boxed{6.02 \times 10^{23}}", {}),
    ("6.02e23", r"6.02 \cdot 10^{23}", {}),
    ("6.02e23", "6.02E+23", {}),
    ("0.001", r"\boxed{10^{-3}}", {}),
    ("1234567", r"\boxed{1,234,567}", {}),
    ("-5", "−5", {}),
    ("0.75", r"\boxed{\frac{3}{4}}", {}),
    ("0.75", "3/4", {}),
    ("5", r"\boxed{x = 5}", {}),
    ("5", r"\boxed{\approx 5.0004}", {}),
    ("5", r"\boxed{5 \text{ apples}}", {}),
    ("50", r"\boxed{50\%}", {"units": "percent"}),
    ("100", r"\boxed{100.5}", {"rtol": 1e-2}),
    ("100", r"\boxed{100.5}", {"atol": 1}),
    ("3 m", r"\boxed{\SI{300}{\centi\metre}}", {}),
]

NUMERIC_WRONG = [
    ("3200 m", r"\boxed{3.2 s}", {}, "wrong units: got s (a time), expected a length"),
    ("3200", "3.2 s", {"units": "m"}, "wrong units: got s (a time), expected a length"),
    ("1.5 kJ", r"\boxed{1500 N}", {}, "wrong units: got N (a force), expected an energy"),
    ("3200 m", r"\boxed{3200}", {}, "no units: expected a length"),
    ("1.5 kJ", r"\boxed{1500 blargs}", {}, "wrong units: could not read the unit (expected an energy)"),
    ("5 m", r"\boxed{5 m^9^9^9}", {}, "wrong units: could not read the unit (expected a length)"),
    ("100", r"\boxed{100.5}", {}, "not equal to the reference (outside the tolerance)"),
    ("5", r"\boxed{5.001}", {}, "not equal to the reference (outside the tolerance)"),
    ("5", r"\boxed{5, 6}", {}, "the final answer must be a single number"),
    ("5", r"\boxed{6, 5}", {}, "the final answer must be a single number"),
    ("3200 m", r"\boxed{3.2 km, 3200 m}", {}, "wrong units: could not read the unit (expected a length)"),
    ("5", r"\boxed{five}", {}, "could not read a number in the final answer"),
    ("1", r"\boxed{1e999999}", {}, "not equal to the reference (outside the tolerance)"),
    (
        "5",
        "no idea, honestly; I would have to think about this one much longer",
        {},
        "no final answer found (expected \\boxed{...} or an 'Answer:' line)",
    ),
]


@pytest.mark.parametrize(("gold", "response", "options"), NUMERIC_EQUIVALENT)
def test_numeric_equivalent(gold: str, response: str, options: dict) -> None:
    v = check("numeric", gold, response, **options)
    assert v.correct, v


@pytest.mark.parametrize(("gold", "response", "options", "feedback"), NUMERIC_WRONG)
def test_numeric_wrong(gold: str, response: str, options: dict, feedback: str) -> None:
    v = check("numeric", gold, response, **options)
    assert not v.correct and v.score == 0.0
    assert v.feedback == feedback


def test_numeric_unit_power_tower_is_bounded() -> None:
    t0 = time.monotonic()
    v = check("numeric", "5 m", r"\boxed{5 m^(9^9^9)}")
    assert time.monotonic() - t0 < HANG_BOUND_S and not v.correct


@pytest.mark.parametrize(
    ("gold", "options", "match"),
    [
        ("five", {}, "not a number"),
        ("5 furlongz", {}, "cannot read the unit"),
        ("5 s", {"units": "m"}, "different dimension"),
    ],
)
def test_numeric_bad_gold_is_a_spec_error(gold: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check("numeric", gold, "5", **options)


# --- choice ----------------------------------------------------------------------------------------------------

OPTIONS = ["London", "Paris", "Berlin", "Madrid"]


@pytest.mark.parametrize(
    "response",
    [
        "B",
        "(B)",
        "b",
        r"\boxed{B}",
        r"\boxed{(B)}",
        r"\boxed{\text{B}}",
        "Answer: B",
        "**Answer:** B",
        "Answer: (B) Paris",
        "B) Paris",
        "B. Paris",
        "Paris",
        "paris.",
        "The answer is (B)",
        "The answer is B.",
        r"Final answer: \textbf{(B)}",
    ],
)
def test_choice_correct(response: str) -> None:
    v = check("choice", "B", response, options=OPTIONS)
    assert v.correct, v


@pytest.mark.parametrize(
    ("response", "feedback"),
    [
        ("A", "not the correct option"),
        ("London", "not the correct option"),
        ("A, B, C, D", "named several different options; name exactly one"),
        (r"\boxed{B, C}", "named several different options; name exactly one"),
        ("B or C", "named several different options; name exactly one"),
        ("B) London", "named several different options; name exactly one"),
        ("Rome", "could not tell which option the answer names (give its letter)"),
        ("E", "could not tell which option the answer names (give its letter)"),
    ],
)
def test_choice_wrong(response: str, feedback: str) -> None:
    v = check("choice", "B", response, options=OPTIONS)
    assert not v.correct
    assert v.feedback == feedback


def test_choice_without_option_texts_matches_letters() -> None:
    assert check("choice", "E", r"\boxed{E}").correct
    assert not check("choice", "E", r"\boxed{D}").correct


@pytest.mark.parametrize(
    ("gold", "options", "exc", "match"),
    [
        ("E", OPTIONS, ValueError, "gold must be one option letter in A-D"),
        ("Paris", OPTIONS, ValueError, "gold must be one option letter"),
    ],
)
def test_choice_bad_gold(gold: str, options: list[str], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        check("choice", gold, "B", options=options)


@pytest.mark.parametrize(
    ("options", "match"),
    [(["Paris", "paris."], "must differ"), ([str(i) for i in range(27)], "at most 26"), (["a", " "], "non-empty")],
)
def test_choice_bad_options(options: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=rf"verifier 'choice': option 'options'.*{match}"):
        check("choice", "A", "A", options=options)


# --- exact -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "response", "normalize", "correct"),
    [
        ("New York", "Answer:   New   York ", None, True),
        ("New York", "new york", None, False),
        ("New York", "new york", ["lower", "strip"], True),
        ("New York", "Answer: new-york!", ["lower", "strip_punctuation", "strip"], False),
        ("New York", "Answer: new york!", ["strip", "strip_punctuation", "lower"], True),
        ("a b", "a\n\tb", ["collapse_whitespace"], True),
        ("a b", "ab", None, False),
        ("it's", "Answer: its", ["strip_punctuation"], True),
    ],
)
def test_exact(gold: str, response: str, normalize: list[str] | None, correct: bool) -> None:
    options = {} if normalize is None else {"normalize": normalize}
    v = check("exact", gold, response, **options)
    assert v.correct is correct, v
    if not correct:
        assert v.feedback == "not equal to the reference"


def test_exact_uses_whole_response_when_no_answer_is_extracted() -> None:
    long = "The capital of France is a city on the Seine, and it is Paris."
    v = check("exact", long, long)
    assert v.correct and v.extracted == long


def test_exact_rejects_unknown_normalization() -> None:
    with pytest.raises(ValueError, match=r"verifier 'exact': option 'normalize\.0'"):
        check("exact", "a", "a", normalize=["uppercase"])


# --- regex -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "response", "options", "correct"),
    [
        ("42", "x = 42", {"pattern": r"(?:x\s*=\s*)?{gold}"}, True),
        ("42", "x = 421", {"pattern": r"(?:x\s*=\s*)?{gold}"}, False),
        ("1+1", "Answer: 11", {"pattern": "{gold}"}, False),  # the gold is escaped, + is literal
        ("1+1", "Answer: 1+1", {"pattern": "{gold}"}, True),
        ("", "Answer: 2024-05-01", {"pattern": r"\d{4}-\d{2}-\d{2}"}, True),  # quantifier braces survive
        ("", "Answer: yes", {"pattern": "YES", "flags": ["IGNORECASE"]}, True),
        ("", "Answer: yes", {"pattern": "YES"}, False),
        ("", "Answer: so yes indeed", {"pattern": "yes"}, False),
        ("", "Answer: so yes indeed", {"pattern": "yes", "fullmatch": False}, True),
        (
            "",
            "a long response that says done somewhere inside it, at length",
            {"pattern": "done", "fullmatch": False},
            False,
        ),
        (
            "",
            "a long response that says done somewhere inside it, at length",
            {"pattern": "done", "fullmatch": False, "target": "response"},
            True,
        ),
        (
            "",
            "line one\nANSWER-OK",
            {"pattern": "^answer-ok$", "flags": ["IGNORECASE", "MULTILINE"], "fullmatch": False, "target": "response"},
            True,
        ),
    ],
)
def test_regex(gold: str, response: str, options: dict, correct: bool) -> None:
    assert check("regex", gold, response, **options).correct is correct


def test_regex_invalid_pattern_fails_at_options_validation() -> None:
    with pytest.raises(ValidationError, match="pattern"):
        VERIFIERS["regex"].options_model(pattern="(unclosed")
    with pytest.raises(ValueError, match=r"verifier 'regex': option 'pattern': .*not a valid regular expression"):
        check("regex", "1", "1", pattern="(unclosed")


def test_regex_too_long() -> None:
    v = check("regex", "", "z" * 100, pattern="z+", target="response", max_chars=50)
    assert not v.correct and v.feedback.startswith("answer too long")


# --- registry, options, the Verification model -----------------------------------------------------------------


def test_builtin_kinds_are_registered() -> None:
    assert set(BUILTIN_KINDS) <= set(VERIFIERS)


@pytest.mark.parametrize("kind", sorted(VERIFIERS))
def test_every_options_model_forbids_extras_and_documents_fields(kind: str) -> None:
    verifier = VERIFIERS[kind]
    assert verifier.name == kind
    model = verifier.options_model
    assert issubclass(model, BaseModel)
    assert model.model_config.get("extra") == "forbid"
    for name, field in model.model_fields.items():
        assert field.description, f"{kind}.{name} has no description"


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(ValueError, match=r"unknown verifier kind 'numerc'.*math.*numeric.*did you mean 'numeric'"):
        check("numerc", "1", "1")
    with pytest.raises(KeyError):
        VERIFIERS["numerc"]
    assert "numerc" not in VERIFIERS
    assert issubclass(UnknownVerifierError, KeyError) and issubclass(UnknownVerifierError, ValueError)


def test_unknown_option_names_kind_option_and_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        check("numeric", "1", "1", rtoll=0.1)
    msg = str(info.value)
    assert "verifier 'numeric'" in msg and "unknown option 'rtoll'" in msg and "did you mean 'rtol'" in msg
    assert "valid options: rtol, atol, units" in msg


@pytest.mark.parametrize(
    ("kind", "options", "option"),
    [
        ("numeric", {"rtol": -1}, "rtol"),
        ("numeric", {"units": "furlongz"}, "units"),
        ("math", {"timeout_s": 0}, "timeout_s"),
        ("math", {"max_answer_chars": 0}, "max_answer_chars"),
        ("regex", {"pattern": "a", "flags": ["VERBOSE"]}, "flags.0"),
    ],
)
def test_bad_option_value_names_the_option(kind: str, options: dict, option: str) -> None:
    with pytest.raises(ValueError, match=rf"verifier '{kind}': option '{re.escape(option)}'"):
        check(kind, "1", "1", **options)


def test_check_rejects_non_str_gold_and_response() -> None:
    with pytest.raises(TypeError, match="gold must be a str"):
        check("exact", 1, "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="response must be a str"):
        check("exact", "1", None)  # type: ignore[arg-type]


def test_register_duplicate_raises() -> None:
    with pytest.raises(ValueError, match="'math' is already registered"):
        register_verifier(MathVerifier())


class _EchoOptions(VerifierOptions):
    suffix: str = ""


class _EchoVerifier:
    name = "echo"
    options_model = _EchoOptions

    def check(self, gold: str, response: str, options: _EchoOptions) -> Verification:
        if response == gold + options.suffix:
            return Verification.right(response)
        return Verification.wrong(response, "different")


def test_registry_accepts_new_kinds_and_rejects_bad_shapes() -> None:
    reg = VerifierRegistry()
    reg.register(_EchoVerifier())
    assert list(reg) == ["echo"] and len(reg) == 1
    with pytest.raises(ValueError, match="already registered"):
        reg.register(_EchoVerifier())

    class Loose(BaseModel):
        x: int = 0

    class BadOptions(_EchoVerifier):
        name = "bad"
        options_model = Loose

    with pytest.raises(TypeError, match="extra='forbid'"):
        reg.register(BadOptions())

    class Nameless(_EchoVerifier):
        name = ""

    with pytest.raises(TypeError, match="name"):
        reg.register(Nameless())


def test_verification_is_frozen_and_has_no_partial_credit() -> None:
    v = Verification.right("4")
    with pytest.raises(ValidationError):
        v.correct = False  # type: ignore[misc]
    with pytest.raises(ValidationError, match="no partial credit"):
        Verification(correct=False, score=0.5, extracted="4", feedback="close")
    with pytest.raises(ValidationError):
        Verification(correct=True, score=0.0, extracted="4", feedback="correct")


# --- the gold never leaks into feedback -------------------------------------------------------------------------

GOLD_TOKENS = st.from_regex(r"[A-Z0-9]{6,12}", fullmatch=True)


def _wrong_math_responses(n: int) -> list[str]:
    m = n + 1
    return [
        rf"\boxed{{{m}}}",
        f"Answer: {m}",
        rf"\boxed{{{m} + x}}",
        "no answer here at all, just some rambling text",
        rf"\boxed{{{'9' * 60}}}",
        f"{m}/{n}",
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(-(10**9), 10**9))
def test_gold_integer_never_in_feedback_math(n: int) -> None:
    for response in _wrong_math_responses(n):
        v = check("math", str(n), response, max_answer_chars=50)
        assert str(n) not in v.feedback and str(abs(n)) not in v.feedback, (response, v)
        assert not re.search(r"\d", v.feedback), v.feedback


@settings(max_examples=60, deadline=None)
@given(st.integers(-(10**9), 10**9))
def test_gold_integer_never_in_feedback_numeric(n: int) -> None:
    m = n + 1
    cases = [
        (f"{n} m", [f"{m} m", f"{m} s", f"{m}", f"{m} blargs", f"{m} m^9^9", f"{m}, {n} m"], {}),
        (str(n), [str(m), f"{m}, {n}", "five", f"{m} km"], {}),
        (str(n), [f"{m} km", f"{m} kg", str(m)], {"units": "m"}),
    ]
    for gold, responses, options in cases:
        for response in responses:
            v = check("numeric", gold, rf"\boxed{{{response}}}", **options)
            assert not re.search(r"\d", v.feedback), (gold, response, v)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3), st.lists(GOLD_TOKENS, min_size=4, max_size=4, unique=True))
def test_gold_never_in_feedback_choice(gold_index: int, texts: list[str]) -> None:
    gold = "ABCD"[gold_index]
    wrong = "ABCD"[(gold_index + 1) % 4]
    for response in [wrong, texts[(gold_index + 1) % 4], "A, B, C, D", f"{gold} or {wrong}", "no idea at all", "Z"]:
        v = check("choice", gold, response, options=texts)
        assert not v.correct
        assert not re.search(rf"\b{gold}\b", v.feedback), v.feedback
        assert not any(t.lower() in v.feedback.lower() for t in texts), v.feedback


@settings(max_examples=60, deadline=None)
@given(st.one_of(GOLD_TOKENS, st.integers(-(10**9), 10**9).map(str)))
def test_gold_never_in_feedback_exact_and_regex(gold: str) -> None:
    for response in [gold + "X", "Answer: " + gold[::-1] + "Q", "", "x" * 20_000]:
        for kind, options in [
            ("exact", {}),
            ("exact", {"normalize": ["lower", "strip_punctuation"]}),
            ("regex", {"pattern": "{gold}"}),
            ("regex", {"pattern": "(?:answer: )?{gold}", "flags": ["IGNORECASE"], "target": "response"}),
        ]:
            v = check(kind, gold, response, **options)
            assert not v.correct
            assert gold not in v.feedback, (kind, response, v)
