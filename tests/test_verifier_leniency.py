"""Answers written the way models write them, outside ``\\boxed{}``: the math verifier is at least as lenient as
Math-Verify's own ``verify(parse(gold), parse(response))`` on right answers and no more lenient on wrong ones; the
numeric (science) verifier reads the same shapes with units. Real Math-Verify in real worker processes, no mocks.

Case groups marked "Math-Verify" are adapted from huggingface/Math-Verify ``tests/test_all.py`` (the test named
in each comment); the rest are the shapes issue 11 (item 5) lists, each with a wrong twin.
"""

from __future__ import annotations

import logging
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amrsd_envs.verifiers import check
from amrsd_envs.verifiers.extract import extract_answer_with_source, loose_answer_candidates
from amrsd_envs.verifiers.math_verifier import for_math_verify, is_definite, prepare_gold

HANG_BOUND_S = 30.0
NO_ANSWER = "no final answer found (expected \\boxed{...} or an 'Answer:' line)"

# --- the shapes, right and wrong ----------------------------------------------------------------------------------

PMATRIX = r"\begin{pmatrix}1 & 2\\ 3 & 4\end{pmatrix}"
# (gold, a right response, the same response with a wrong value)
SHAPES = [
    pytest.param(
        r"\frac{1}{2}",
        "We add the two probabilities.\n\nAnswer:\n$$\\frac{1}{2}$$",
        "We add the two probabilities.\n\nAnswer:\n$$\\frac{1}{3}$$",
        id="display-math-after-answer",
    ),
    pytest.param(
        r"\frac{1}{2}",
        "We add the two probabilities.\n\n**Final Answer**\n\\[\n\\frac{1}{2}\n\\]",
        "We add the two probabilities.\n\n**Final Answer**\n\\[\n\\frac{2}{3}\n\\]",
        id="display-bracket-after-final-answer",
    ),
    pytest.param(
        "5",
        "After simplifying both sides of the equation we find that x = 5",
        "After simplifying both sides of the equation we find that x = 6",
        id="x=5-in-a-sentence",
    ),
    pytest.param(
        "5",
        "Answer: x = 5, so the value we want is 5",
        "Answer: x = 6, so the value we want is 6",
        id="answer-line-with-prose",
    ),
    pytest.param(
        "x > 3",
        "Solving the inequality, the solution set is all x with $x > 3$.",
        "Solving the inequality, the solution set is all x with $x > 4$.",
        id="inequality-in-a-sentence",
    ),
    pytest.param(
        PMATRIX,
        "So the product is $\\left(\\begin{array}{cc}1 & 2\\\\ 3 & 4\\end{array}\\right)$.",
        "So the product is $\\left(\\begin{array}{cc}1 & 2\\\\ 3 & 5\\end{array}\\right)$.",
        id="matrix-as-array",
    ),
    pytest.param(
        PMATRIX,
        "So the product is $\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}$.",
        "So the product is $\\begin{pmatrix}2 & 1\\\\ 3 & 4\\end{pmatrix}$.",
        id="matrix-as-pmatrix",
    ),
    pytest.param(
        r"\left(\frac{1}{3}, \frac{5}{3}\right)",
        "The function is negative on the interval $(0.333333, 1.666667)$, approximately.",
        "The function is negative on the interval $(0.333333, 1.666668)$, approximately.",
        id="interval-in-rounded-decimals",
    ),
    pytest.param(
        "18",
        "Adding the two segments, the total length is $18\\text{ cm}$.",
        "Adding the two segments, the total length is $19\\text{ cm}$.",
        id="18-text-cm",
    ),
    pytest.param(
        "1000",
        "Multiplying it out, the total number of paths is $1{,}000$.",
        "Multiplying it out, the total number of paths is $1{,}001$.",
        id="1{,}000",
    ),
    pytest.param(
        r"\frac{3}{4}",
        "Dividing the favourable outcomes by all outcomes, the probability is 0.750.",
        "Dividing the favourable outcomes by all outcomes, the probability is 0.751.",
        id="0.750",
    ),
    pytest.param(
        r"\{-1, 3\}",
        "Both roots check out, so the solution set is $\\{3, -1\\}$.",
        "Both roots check out, so the solution set is $\\{3, 1\\}$.",
        id="latex-set",
    ),
    pytest.param(
        r"\{-1, 3\}",
        "The solutions are $x = 3$ and $x = -1$.",
        "The solutions are $x = 3$ and $x = 1$.",
        id="set-as-two-equations",
    ),
]


@pytest.mark.parametrize(("gold", "right", "wrong"), SHAPES)
def test_shape_right_is_accepted(gold: str, right: str, wrong: str) -> None:
    v = check("math", gold, right)
    assert v.correct, v
    assert v.extracted  # what was judged is reported


@pytest.mark.parametrize(("gold", "right", "wrong"), SHAPES)
def test_shape_wrong_is_rejected(gold: str, right: str, wrong: str) -> None:
    v = check("math", gold, wrong)
    assert not v.correct, v
    assert v.feedback == "not equal to the reference"
    assert v.extracted


def test_interval_rounded_to_two_places_needs_float_rounding() -> None:
    gold, response = r"\left(\frac{1}{3}, \frac{5}{3}\right)", "The interval is approximately $(0.33, 1.67)$."
    assert not check("math", gold, response).correct  # Math-Verify rounds to 6 places by default
    assert check("math", gold, response, float_rounding=2).correct
    assert not check("math", gold, "The interval is approximately $[0.33, 1.67]$.", float_rounding=2).correct


def test_extracted_is_math_verifys_pick_when_it_decided() -> None:
    v = check("math", r"\frac{1}{2}", "Work.\n\nAnswer:\n$$\\frac{1}{2}$$")
    assert v.extracted == r"\frac{1}{2}"
    v = check("math", "5", "After simplifying both sides of the equation we find that x = 6")
    assert v.extracted == "6"


# --- Math-Verify's own cases ------------------------------------------------------------------------------------

MATH_VERIFY_RIGHT = [
    # Math-Verify test_all.py::test_latex_notation (notations after the word "Answer")
    ("9", r"Answer \[ 9 \]"),
    ("9", "Answer $ 9 $"),
    ("9", "Answer $$ 9 $$"),
    ("9", r"Answer \( 9 \)"),
    ("10", r"Answer \( (9+1) \)"),
    ("9", "Answer \\[ \n 9 \n \\]"),
    ("9", "Answer $$ \n 9 \n $$"),
    (r"\frac{1}{3}", r"$\left( \frac{1}{3} \right)$"),
    (r"\frac{1}{3}", r"We get $k = \frac{1}{3}$ after solving the linear equation above."),
    (r"\frac{1}{3}", r"The rope is $\frac{1}{3} \text{meters}$ long, as the diagram shows."),
    # Math-Verify test_all.py::test_number_extraction (expr extraction: the last number wins)
    ("1000.99", "the number is not 10 which is 1,000.99€"),
    ("1000.99", "so the number is 10 which is 1,000.99m²"),
    ("7425000", "The population grew and it was 7,425,000 by the end of the decade"),
    # Math-Verify test_all.py::test_percent_notation
    (r"28\%", "The loss over the two days comes to 28 percent"),
    # Math-Verify test_all.py, the worked-MATH-solutions group after test_percent_notation (box removed)
    (
        r"2-2p",
        r"Since $x<2$, it follows that $|x-2|=2-x$. If $2-x=p$, then $x=2-p$. Thus $x-p=2-2p$.",
    ),
    # Math-Verify test_all.py::test_matrix_extraction
    (r"\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}", r"The identity is $ \begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix} $."),
    (r"\begin{bmatrix}0 & 0 \\0 & 0\end{bmatrix}", r"A zero matrix: $ \begin{pmatrix}0 & 0 \\0 & 0\end{pmatrix} $"),
    (r"\begin{pmatrix}1 & 2 \\3 & 4\end{pmatrix}", r"So: $ \left[\begin{array}{cc}1 & 2 \\3 & 4\end{array}\right] $"),
    # Math-Verify test_all.py, "Issue #1: Rational number extraction" / "Issue #2: Integer extraction" (shortened)
    ("2/3", "P(A) = (1/2) * (4/3) P(A) = 2/3 Therefore, the probability that Alice wins the game is 2/3."),
    ("12", "The divisors of 90 are 1, 2, 3, 5, 6, 9, 10, 15, 18, 30, 45, and 90. Therefore, there are 12 sequences."),
]

MATH_VERIFY_WRONG = [
    # Math-Verify test_all.py::test_number_extraction: a number inside a word is not an answer
    ("2", "The code printed AZYUK2A and then it stopped"),
    # the last number wins: an earlier mention is not the answer
    ("10", "the number is not 10 which is 1,000.99€"),
    ("1000.99", "the number is 1,000.99 and not 10, which is far too small"),
    # Math-Verify test_all.py::test_percent_notation
    ("0.28", "The loss over the two days comes to 28"),
    # Math-Verify test_all.py::test_sets_handling: closed vs half-open interval
    ("[0, 9)", "The domain of the function is $(0,9)$, as computed."),
    # Math-Verify test_all.py::test_matrix_extraction ("Test incorrect matrix")
    (r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}", r"The matrix: $\begin{pmatrix}1 & 2 \\ 3 & 5\end{pmatrix}$"),
    # Math-Verify test_all.py, "Issue #4: Correctly extract incorrect answer" (shortened)
    ("[0,1)", "the domain is the interval $(0, 1)$. Final Answer: The final answer is $(0, 1)$. I hope it is correct."),
]


@pytest.mark.parametrize(("gold", "response"), MATH_VERIFY_RIGHT)
def test_math_verify_cases_right(gold: str, response: str) -> None:
    assert check("math", gold, response).correct


@pytest.mark.parametrize(("gold", "response"), MATH_VERIFY_WRONG)
def test_math_verify_cases_wrong(gold: str, response: str) -> None:
    assert not check("math", gold, response).correct


def _math_verify_says(gold: str, response: str) -> bool:
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    return bool(verify(parse(for_math_verify(prepare_gold(gold))), parse(response)))


@pytest.mark.parametrize(
    ("gold", "response"),
    [(g, r) for g, r in MATH_VERIFY_RIGHT + MATH_VERIFY_WRONG]
    + [(p.values[0], p.values[1]) for p in SHAPES]
    + [(p.values[0], p.values[2]) for p in SHAPES],
)
def test_verdict_agrees_with_math_verify_on_the_whole_response(gold: str, response: str) -> None:
    # Outside boxes, the verifier is exactly as lenient as Math-Verify's own parse of the whole response.
    assert check("math", gold, response).correct == _math_verify_says(gold, response)


# --- several answers in one response: one pick, never "whichever matches" ----------------------------------------

HEDGES = [
    # (response, the one gold it is right for, another value it mentions)
    ("\\boxed{4}\nWait, the final answer is 5.", "4", "5"),  # the box is final (Math-Verify would pick 5)
    ("Answer: 4\nHmm, maybe the final answer is 5 after all.", "4", "5"),  # a bare answer line is final
    ("It is either $3$ or $4$, I am not sure which.", None, "3"),  # Math-Verify reads {3, 4}: neither
    ("So it is $1$, $2$ or $3$.", None, "3"),
    ("First I thought 12, then 15, and in the end the count is 14", "14", "12"),
    ("Answer: $\\frac{1}{2}$ or $\\frac{1}{3}$", None, r"\frac{1}{2}"),
]


@pytest.mark.parametrize(("response", "right_for", "other"), HEDGES)
def test_a_response_naming_several_values_is_right_for_at_most_one(
    response: str, right_for: str | None, other: str
) -> None:
    assert not check("math", other, response).correct
    if right_for is not None:
        assert check("math", right_for, response).correct


def test_definite_answers() -> None:
    assert is_definite("4", "answer_line")
    assert is_definite(r"\frac{\sqrt{2}}{2} + \infty", "short_response")
    assert is_definite(r"18\text{ cm}", "answer_line")
    assert is_definite("x = 5, so the value is 5", "boxed")
    assert not is_definite("x = 5, so the value is 5", "answer_line")
    assert not is_definite(r"The set is $\{1, 2\}$", "short_response")
    assert extract_answer_with_source(r"so \boxed{3}") == ("3", "boxed")
    assert extract_answer_with_source("Answer: 3") == ("3", "answer_line")
    assert extract_answer_with_source(" 3 ") == ("3", "short_response")
    assert extract_answer_with_source("x" * 41) is None


# --- options and bounds ---------------------------------------------------------------------------------------


def test_whole_response_reading_can_be_turned_off_and_is_capped() -> None:
    response = "We add the two probabilities.\n\nAnswer:\n$$\\frac{1}{2}$$"
    assert check("math", r"\frac{1}{2}", response).correct
    v = check("math", r"\frac{1}{2}", response, parse_whole_response=False)
    assert not v.correct and v.extracted is None and v.feedback == NO_ANSWER
    v = check("math", r"\frac{1}{2}", response, whole_response_max_chars=20)
    assert not v.correct and v.feedback == NO_ANSWER


def test_no_answer_anywhere_still_says_so() -> None:
    v = check("math", "4", "I am not sure what the answer is, it could be many things really.")
    assert not v.correct and v.extracted is None and v.feedback == NO_ANSWER


@pytest.mark.slow
@pytest.mark.parametrize(
    "response",
    ["answer " * 7000, "\\boxed{" * 7000, "$" * 49_000, "y" * 1_000_000, "Let $x$ be " * 4000],
    ids=["answer-words", "open-boxes", "dollars", "long-plain", "many-envs"],
)
def test_degenerate_text_is_bounded(response: str) -> None:
    t0 = time.monotonic()
    v = check("math", "5", response, timeout_s=2)
    assert time.monotonic() - t0 < HANG_BOUND_S
    assert not v.correct


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(-(10**6), 10**6))
def test_gold_never_in_feedback_on_the_whole_response_path(n: int) -> None:
    m = n + 1
    for response in [
        f"We work it out carefully.\n\nAnswer:\n$${m}$$",
        f"After simplifying both sides of the equation we find that x = {m}",
        f"It is either ${n}$ or ${m}$, I am not sure which one it is.",
        f"\\boxed{{{m}}}\nWait, the final answer is {n}.",
    ]:
        v = check("math", str(n), response)
        assert not v.correct
        assert not re.search(r"\d", v.feedback), (response, v)


# --- the numeric (science) verifier: same shapes, with units ----------------------------------------------------

NUMERIC_RIGHT = [
    ("18 cm", "Using the lens equation, the focal length is 18 cm.", {}),
    ("18 cm", "Using the lens equation, $f = 18\\text{ cm}$ and we are done.", {}),
    ("18", "Using the lens equation, $f = 18\\text{ cm}$ and we are done.", {"units": "cm"}),
    ("0.18 m", "The image forms 18 cm behind the lens.", {}),
    ("3.2 km", "The final answer is 3200 m. Earlier we had 5 m for the first leg.", {}),
    ("12 m/s", "Answer:\n$$ v = 12 \\mathrm{m/s} $$", {}),
    ("9 J", "The mass is 2 kg and the speed 3 m/s, so KE = 9 J", {}),
    ("1000", "Multiplying it out, the total is $1{,}000$.", {}),
    ("1000", "\\boxed{1{,}000}", {}),
    ("0.75", "Dividing the two, the ratio is 0.750.", {}),
]

NUMERIC_WRONG = [
    ("19 cm", "The image forms 18 cm behind the lens.", {}, "not equal to the reference (outside the tolerance)"),
    ("18 cm", "The image forms 18 s after the flash.", {}, "wrong units: got s (a time), expected a length"),
    ("18 cm", "Using the lens equation the focal length is 18.", {}, "no units: expected a length"),
    ("5 m", "The final answer is 3200 m. Earlier we had 5 m for the first leg.", {}, None),
    ("2 kg", "The mass is 2 kg and the speed 3 m/s, so KE = 9 J", {}, None),
    ("1001", "Multiplying it out, the total is $1{,}000$.", {}, None),
    ("5", "I could not work this one out, sorry about that, really.", {}, NO_ANSWER),
]


@pytest.mark.parametrize(("gold", "response", "options"), NUMERIC_RIGHT)
def test_numeric_reads_answers_outside_boxes(gold: str, response: str, options: dict) -> None:
    v = check("numeric", gold, response, **options)
    assert v.correct, v


@pytest.mark.parametrize(("gold", "response", "options", "feedback"), NUMERIC_WRONG)
def test_numeric_wrong_outside_boxes(gold: str, response: str, options: dict, feedback: str | None) -> None:
    v = check("numeric", gold, response, **options)
    assert not v.correct, v
    if feedback is not None:
        assert v.feedback == feedback
    assert not re.search(r"\d", v.feedback)


def test_loose_candidates_follow_math_verify_priority() -> None:
    assert loose_answer_candidates("The focal length is 18 cm.") == ["18 cm"]
    # "final answer ... is" outranks a later plain number
    assert loose_answer_candidates("The final answer is 3.2 km. Earlier: 5 m.")[0] == "3.2 km"
    # a math environment's content after its last "="
    assert loose_answer_candidates("so $f = 18\\text{ cm}$ here")[0] == r"18\text{ cm}"
    # plain matches: the rightmost first
    assert loose_answer_candidates("mass 2 kg, speed 3 m/s, so KE = 9 J")[:3] == ["9 J", "3 m/s", "2 kg"]
    assert loose_answer_candidates("no numbers here") == []


def test_loose_candidates_are_bounded_on_huge_inputs() -> None:
    for text in ["1 " * 500_000, "$" * 1_000_000, "final answer " * 100_000, "answer: " * 100_000]:
        t0 = time.monotonic()
        check("numeric", "5", text)
        assert time.monotonic() - t0 < HANG_BOUND_S
