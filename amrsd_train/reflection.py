"""Meta-reflection between episodes (docs/ALGORITHMS.md, amrsd (a)): diagnose a task group, distill a hint, vet it.

1. *Diagnose* (:func:`diagnose`): gather, for one task group, the task prompt, each attempt's extracted answer,
   verifier outcome and feedback, one successful peer transcript (the group's first correct attempt, else the
   :class:`~amrsd_envs.peers.PeerBuffer`'s), the most common wrong answer, the task's reference, and what the
   leak filter needs (gold, ground-truth tool arguments, choices, tolerance) into a :class:`Diagnosis`.
2. *Distill* (:class:`Reflector`): the current policy writes ``<hint>...</hint>`` from the reflection prompt
   (:func:`reflection_messages`), one per group or one critique per attempt.
3. *Vet* (:func:`vet_hint` = :func:`leak_filter` + a question count): a rejected hint is resampled
   ``resamples`` times; if every sample is rejected the hint is ``None`` and the group trains as plain GRPO.

The gold never reaches the policy: every free text rendered into a reflection prompt (feedback, answers,
transcripts, the peer, the reference) passes through :func:`redact_gold`, which uses the same gold matcher as
:func:`leak_filter`. The :class:`Diagnosis` itself keeps the peer and reference raw, because the filter
compares hints against them and the "no reflection" ablation (:func:`raw_context`) shows them unvetted.

The leak filter is pure Python (regular expressions and :class:`fractions.Fraction` arithmetic, no sympy and no
verifier worker processes), deterministic, and fast: thousands of hints per second.
"""

from __future__ import annotations

import collections
import hashlib
import re
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

from amrsd_envs.catalog import TaskCatalog, TaskInstance
from amrsd_envs.peers import PeerBuffer
from amrsd_train.config import ReflectionConfig
from amrsd_train.engines.base import Engine, SamplingParams

__all__ = [
    "Attempt",
    "Diagnosis",
    "HintResult",
    "LeakVerdict",
    "MessageTemplate",
    "PromptTemplates",
    "Reflector",
    "count_questions",
    "diagnose",
    "extract_hint",
    "leak_filter",
    "raw_context",
    "redact_gold",
    "reflection_jobs",
    "reflection_messages",
    "teacher_messages",
    "vet_hint",
]

HINT_OPEN = "<hint>"
HINT_CLOSE = "</hint>"
NULL_HINT = "(none)"
"""What the teacher context shows when there is no hint (CIG's null hint, docs/ALGORITHMS.md amrsd (b))."""
REDACTED = "[hidden]"
"""What replaces a gold value in a rendered reflection prompt."""
NGRAM = 8
"""A hint copying this many consecutive words of the reference or the peer is rejected."""
MAX_GOLD_COMPONENTS = 4
"""A composite gold (tuple, set, small record) with at most this many numbers has each of them treated as
secret; a larger one (a whole database state) only as a string, or every small number would be banned."""
PROMPTS_DIR = Path(__file__).parent / "prompts"


# ==================================================================================================
# Numbers: every way a value can be written in a hint
# ==================================================================================================


@dataclass(frozen=True)
class _Number:
    """One number found in a text.

    Attributes:
        start, end: its span in the text.
        value: its absolute value (signs are ignored on purpose: ``-17`` and ``17`` give the same thing away).
        digits: significant digits of a decimal literal (``6.5620`` -> ``6562``), None for fractions and words.
        places: decimal places written (``0.4167`` -> 4); 0 for integers, words, fractions.
        primary: False for a part of a larger form (the ``34`` of ``34/2``), which a gold is never parsed into.
    """

    start: int
    end: int
    value: Fraction
    digits: str | None = None
    places: int = 0
    primary: bool = True


_DEC = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_NUMBER_RE = re.compile(
    rf"\\[dt]?frac\s*(?:\{{\s*[-+−]?\s*(?P<fn>{_DEC})\s*\}}|(?P<fn1>\d))"
    rf"\s*(?:\{{\s*[-+−]?\s*(?P<fd>{_DEC})\s*\}}|(?P<fd1>\d))"
    rf"|(?P<mant>{_DEC})\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*\{{?\s*(?P<exp>[-+−]?\d+)\s*\}}?"
    rf"|(?P<emant>\d+(?:\.\d+)?)[eE](?P<eexp>[-+]?\d+)"
    rf"|(?P<sn>{_DEC})\s*/\s*(?P<sd>{_DEC})"
    rf"|(?P<plain>{_DEC})(?:\s*(?P<scale>thousand|million|billion)\b)?(?P<pct>\s*\\?%)?",
    re.IGNORECASE,
)
_SMALL_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen".split()
    )
} | {word: 10 * k for k, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALE_WORDS = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
_WORD_RE = re.compile(r"[A-Za-z]+")


def _literal(text: str) -> tuple[Fraction, str, int]:
    """``"1,234.50"`` -> (value, significant digits ``"12345"``, decimal places 2)."""
    plain = text.replace(",", "")
    places = len(plain.partition(".")[2])
    digits = plain.replace(".", "").lstrip("0").rstrip("0")
    return Fraction(plain), digits, places


def _ratio(numerator: str, denominator: str) -> Fraction | None:
    top, bottom = _literal(numerator)[0], _literal(denominator)[0]
    return top / bottom if bottom else None


def _numeral_numbers(text: str) -> Iterator[_Number]:
    """Numbers written with digits: plain, thousands-grouped, decimals, percent, ``17 thousand``, fractions
    (``34/2``, ``\\frac{34}{2}``, with their parts as non-primary), scientific (``1.6e-19``,
    ``1.6 \\times 10^{-19}``)."""
    for m in _NUMBER_RE.finditer(text):
        start, end = m.span()
        if m["fn"] or m["fn1"]:
            top, bottom = m["fn"] or m["fn1"], m["fd"] or m["fd1"]
            yield from _fraction_numbers(start, end, top, bottom)
        elif m["sn"]:
            yield from _fraction_numbers(start, end, m["sn"], m["sd"])
        elif m["mant"] or m["emant"]:
            mantissa = m["mant"] or m["emant"]
            exponent = int((m["exp"] or m["eexp"]).replace("−", "-"))
            value, digits, _ = _literal(mantissa)
            yield _Number(start, end, value * Fraction(10) ** exponent, digits)
            yield _Number(start, start + len(mantissa), value, digits, primary=False)
        else:
            yield from _plain_numbers(m, start, end)


def _fraction_numbers(start: int, end: int, numerator: str, denominator: str) -> Iterator[_Number]:
    value = _ratio(numerator, denominator)
    if value is not None:
        yield _Number(start, end, abs(value))
    for part in (numerator, denominator):
        part_value, digits, places = _literal(part)
        yield _Number(start, end, part_value, digits, places, primary=False)


def _plain_numbers(m: re.Match[str], start: int, end: int) -> Iterator[_Number]:
    value, digits, places = _literal(m["plain"])
    if m["scale"]:
        yield _Number(start, end, value * _SCALE_WORDS[m["scale"].lower()], digits)
    else:
        yield _Number(start, end, value, digits, places)
    if m["pct"]:
        yield _Number(start, end, value / 100, digits, primary=False)
    if "," in m["plain"]:  # "6,200" might be the pair (6, 200) written tightly
        for part in m["plain"].split(","):
            part_value, part_digits, part_places = _literal(part)
            yield _Number(start, end, part_value, part_digits, part_places, primary=False)


def _is_number_word(word: str) -> bool:
    return word in _SMALL_WORDS or word in _SCALE_WORDS or word == "hundred"


def _word_numbers(text: str) -> Iterator[_Number]:
    """Numbers written in words: ``seventeen``, ``twenty-one``, ``one hundred and five``, ``three thousand``.

    Adjacent number words (spaces or hyphens between) form one number; ``and`` joins only after ``hundred`` or a
    scale word (``one hundred and five`` is 105, ``two and three`` is 2 and 3).
    """
    group: list[re.Match[str]] = []
    for m in _WORD_RE.finditer(text):
        word = m.group().lower()
        adjacent = bool(group) and text[group[-1].end() : m.start()].strip(" -") == ""
        last = group[-1].group().lower() if group else ""
        if _is_number_word(word) and (adjacent or not group):
            group.append(m)
        elif word == "and" and adjacent and (last == "hundred" or last in _SCALE_WORDS):
            group.append(m)
        else:
            yield from _word_group(group)
            group = [m] if _is_number_word(word) else []
    yield from _word_group(group)


def _word_group(group: list[re.Match[str]]) -> Iterator[_Number]:
    while group and group[-1].group().lower() == "and":
        group = group[:-1]
    if not group:
        return
    total, current = 0, 0
    for m in group:
        word = m.group().lower()
        if word in _SMALL_WORDS:
            current += _SMALL_WORDS[word]
        elif word == "hundred":
            current = (current or 1) * 100
        elif word in _SCALE_WORDS:
            total, current = total + (current or 1) * _SCALE_WORDS[word], 0
    yield _Number(group[0].start(), group[-1].end(), Fraction(total + current))


def _numbers(text: str) -> list[_Number]:
    """Every number in ``text``, in any supported notation (see :func:`_numeral_numbers`, :func:`_word_numbers`)."""
    return [*_numeral_numbers(text), *_word_numbers(text)]


# ==================================================================================================
# The gold: parsed once, matched against hints (leak filter) and against prompt text (redaction)
# ==================================================================================================

_LATEX_NOISE = re.compile(r"\\(?:left|right|displaystyle|[,;:! ])|\$")
_LATEX_WRAPPER = re.compile(r"\\(?:boxed|fbox|text|textbf|textrm|mathrm|mathbf|operatorname|mbox)\s*\{")
_PUNCT_SPACE = re.compile(r"\s*([^\w\s])\s*")


def _clean_latex(text: str) -> str:
    """Drop sizing/spacing commands, ``$`` and answer wrappers (``\\boxed{17}`` -> ``{17}``)."""
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return _LATEX_WRAPPER.sub("{", _LATEX_NOISE.sub(" ", text))


def _normalise(text: str) -> str:
    """Case-, whitespace- and LaTeX-insensitive form: ``\\boxed{\\left( 6, \\ 2\\right)}`` -> ``(6,2)``,
    ``New  York`` -> ``new york`` (no space around punctuation, one space between words)."""
    plain = re.sub(r"[{}\\$]", " ", _clean_latex(text).lower())
    return " ".join(_PUNCT_SPACE.sub(r"\1", plain).split())


@dataclass(frozen=True)
class _Secret:
    """What must not appear: a gold's (or a tool argument's) values and normalised string, and the tolerance
    that makes two numbers equal."""

    numbers: tuple[_Number, ...]
    string: re.Pattern[str] | None
    rtol: Fraction
    atol: Fraction

    def matches(self, number: _Number) -> bool:
        """True when ``number`` gives away one of the secret values.

        Equal exactly or within the verifier's tolerance (``atol + rtol * |gold|``); a decimal within one unit of
        its last written place (``0.4167`` for 5/12: rounded or truncated); or the same 3+ significant digits
        (``6562`` for ``6.562 W``: the value with a unit prefix changed).
        """
        for gold in self.numbers:
            diff = abs(number.value - gold.value)
            if diff <= self.atol + self.rtol * gold.value:
                return True
            if number.places >= 2 and diff < Fraction(1, 10**number.places):
                return True
            if gold.digits and len(gold.digits) >= 3 and number.digits == gold.digits:
                return True
        return False


@lru_cache(maxsize=4096)
def _gold(gold: str, rtol: float = 0.0, atol: float = 0.0) -> _Secret:
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"gold must be a non-empty string (the task's answer), got {gold!r}")
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0 (the verifier's tolerances), got rtol={rtol}, atol={atol}")
    normalised = _normalise(gold)
    pattern = re.compile(rf"(?<![a-z0-9.]){re.escape(normalised)}(?![a-z0-9]|\.\d)") if normalised else None
    return _Secret(_gold_numbers(gold), pattern, Fraction(str(rtol)), Fraction(str(atol)))


def _gold_numbers(gold: str) -> tuple[_Number, ...]:
    """The gold's secret values: one for ``17``, ``-\\frac{40}{91}``, ``6.562 W``, ``2.67e-19 J``; each component
    of a small composite (``(2, 11952)``, ``{x - 10, x - 3}``); none for a large record (a database state)."""
    text = _clean_latex(gold).strip()
    primaries = sorted((n for n in _numbers(text) if n.primary), key=lambda n: n.start)
    if not primaries:
        return ()
    first = primaries[0]
    lead = text[: first.start].strip(" {}")
    rest = text[first.end :].strip(" {}")
    if lead in ("", "-", "+", "−") and (not rest or rest[0].isalpha() or rest[0] in "\\°%"):
        return (first,)
    return tuple(primaries) if len(primaries) <= MAX_GOLD_COMPONENTS else ()


# -- choices ---------------------------------------------------------------------------------------------------

_LETTER_PATTERNS = (
    re.compile(r"\(([A-Z])\)"),
    re.compile(r"(?i:\b(?:option|choice|letter)\s*[:#]?\s*)\(?([A-Za-z])\)?(?![A-Za-z])"),
    re.compile(r"(?i:\banswer\s*(?:is|:)\s*)\(?([A-Z])\)?(?![A-Za-z])"),
    re.compile(r"(?:^|[\s\[])([A-Z])\)"),
    re.compile(r"\\(?:boxed|text|textbf|mathrm|mbox)\s*\{\s*\(?([A-Z])\)?\s*\}"),
)


def _option_text(text: str) -> str:
    """How option texts are compared: lower case, one space, no ``$``, no surrounding punctuation."""
    return re.sub(r"\s+", " ", text.replace("$", "")).strip().lower().strip(string.punctuation + " ")


def _named_options(text: str, choices: Sequence[str]) -> Iterator[tuple[int, int, str]]:
    """Spans ``(start, end, what)`` where ``text`` names an option by letter (``(B)``, ``option B``, ``answer is
    B``, ``B)``, ``\\boxed{B}``) or by its text; ``what`` is ``option B`` or ``option text 'Paris'``."""
    letters = string.ascii_uppercase[: len(choices)]
    for pattern in _LETTER_PATTERNS:
        for m in pattern.finditer(text):
            if m.group(1).upper() in letters:
                yield m.start(1), m.end(1), f"option {m.group(1).upper()}"
    lowered = text.lower()
    for choice in choices:
        wanted = _option_text(choice)
        if not wanted:
            continue
        words = r"\s+".join(re.escape(w) for w in wanted.split(" "))
        for m in re.finditer(rf"(?<![a-z0-9]){words}(?![a-z0-9])", lowered):
            yield m.start(), m.end(), f"option text {choice!r}"


# -- n-grams -----------------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@lru_cache(maxsize=1024)
def _ngrams(text: str) -> frozenset[tuple[str, ...]]:
    words = _words(text)
    return frozenset(tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1))


def _copied_ngram(hint: str, source: str) -> str | None:
    grams = _ngrams(source)
    words = _words(hint)
    for i in range(len(words) - NGRAM + 1):
        if tuple(words[i : i + NGRAM]) in grams:
            return " ".join(words[i : i + NGRAM])
    return None


# ==================================================================================================
# Phase 3: vet
# ==================================================================================================


@dataclass(frozen=True)
class LeakVerdict:
    """The leak filter's decision on one generated hint.

    Attributes:
        ok: True when the hint may be shown to the teacher.
        reason: ``"ok"``, or why not (``"no <hint> tag"``, ``"contains the gold answer '17'"``, ``"names option
            B"``, ``"contains tool argument '3*4+5'"``, ``"copies an 8-gram of the reference: '...'"``,
            ``"more than 3 questions"``).
    """

    ok: bool
    reason: str


_OK = LeakVerdict(True, "ok")


def extract_hint(text: str) -> str | None:
    """The text between the first ``<hint>`` and the first ``</hint>`` after it, stripped; None when either tag
    is missing (an unclosed hint was cut off by the token limit and is not a hint)."""
    start = text.find(HINT_OPEN)
    if start < 0:
        return None
    end = text.find(HINT_CLOSE, start + len(HINT_OPEN))
    if end < 0:
        return None
    return text[start + len(HINT_OPEN) : end].strip()


def leak_filter(
    hint: str,
    *,
    gold: str,
    reference: str | None = None,
    peer: str | None = None,
    tool_args: Sequence[str] | None = None,
    choices: Sequence[str] | None = None,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> LeakVerdict:
    """Decide whether a generated hint may reach the teacher (docs/ALGORITHMS.md amrsd (a), phase 3).

    Only the text inside the tag is checked (it is all the teacher sees). Rejected, in this order:

    * no ``<hint>...</hint>`` (both tags needed: generation stops right after ``</hint>``), or an empty hint;
    * the gold as a normalised string (case-, whitespace- and LaTeX-insensitive: ``\\boxed{(6, 2)}``);
    * any number equal in value to the gold (or to a component of a small composite gold), however written:
      digits, words (``one hundred and five``), with units, ``34/2``, ``\\frac{34}{2}``, ``17.0``, ``1,700%``,
      scientific; within ``atol + rtol * |gold|``; a decimal within one unit of its last place; or the gold's
      3+ significant digits with another exponent. Signs are ignored;
    * for choice tasks, any option named by letter (``(B)``, ``option B``, ``answer is B``) or by its text;
    * a ground-truth tool-argument value: numeric ones compared by value like the gold, others (3+ characters) as
      whitespace- and case-insensitive substrings;
    * any 8 consecutive words (lower-cased alphanumeric tokens) copied from the reference or the peer.

    Args:
        hint: the raw generated text, tags included.
        gold: the task's gold answer.
        reference: the task's worked reference solution, if any.
        peer: the successful peer transcript shown in the reflection prompt, if any.
        tool_args: ground-truth tool-argument values not visible in the task prompt (see :func:`diagnose`).
        choices: the option texts of a choice task (letters A, B, ... in order).
        rtol, atol: the verifier's tolerances (numeric tasks); 0 means exact.

    Returns:
        A :class:`LeakVerdict`; ``reason`` names the first problem found.

    Raises:
        ValueError: ``gold`` is empty, or a tolerance is negative.
    """
    secret = _gold(gold, float(rtol), float(atol))
    content = extract_hint(hint)
    if content is None:
        return LeakVerdict(False, "no <hint> tag")
    if not content:
        return LeakVerdict(False, "empty hint")
    for check in (
        _check_gold(content, gold, secret, choices),
        _check_choices(content, choices),
        _check_tool_args(content, tool_args or ()),
        _check_copy(content, reference, "reference"),
        _check_copy(content, peer, "peer"),
    ):
        if check is not None:
            return check
    return _OK


def _check_gold(content: str, gold: str, secret: _Secret, choices: Sequence[str] | None) -> LeakVerdict | None:
    if not choices:  # a choice gold is a letter: named options are checked instead (a bare "a" is an article)
        if secret.string is not None and secret.string.search(_normalise(content)):
            return LeakVerdict(False, f"contains the gold answer {gold!r}")
    for number in _numbers(content):
        if secret.matches(number):
            return LeakVerdict(False, f"contains the gold answer {gold!r} as {content[number.start:number.end]!r}")
    return None


def _check_choices(content: str, choices: Sequence[str] | None) -> LeakVerdict | None:
    named = next(_named_options(content, choices or ()), None)
    return None if named is None else LeakVerdict(False, f"names {named[2]}")


def _check_tool_args(content: str, tool_args: Sequence[str]) -> LeakVerdict | None:
    squeezed = re.sub(r"\s+", "", content).lower()
    numbers: list[_Number] | None = None
    for arg in tool_args:
        value = _single_number(arg)
        if value is not None:
            numbers = _numbers(content) if numbers is None else numbers
            secret = _Secret((value,), None, Fraction(0), Fraction(0))
            if any(secret.matches(n) for n in numbers):
                return LeakVerdict(False, f"contains tool argument {arg!r}")
            continue
        wanted = re.sub(r"\s+", "", arg).lower()
        if len(wanted) >= 3 and wanted in squeezed:
            return LeakVerdict(False, f"contains tool argument {arg!r}")
    return None


def _single_number(text: str) -> _Number | None:
    """``text`` as one number when it is a number and nothing else (``" 8731 "``, ``"-2.5"``, ``"1e-5"``)."""
    stripped = text.strip().lstrip("+-−").strip()
    found = [n for n in _numeral_numbers(stripped) if n.primary]
    if len(found) == 1 and found[0].start == 0 and found[0].end == len(stripped):
        return found[0]
    return None


def _check_copy(content: str, source: str | None, name: str) -> LeakVerdict | None:
    copied = _copied_ngram(content, source) if source else None
    return None if copied is None else LeakVerdict(False, f"copies an {NGRAM}-gram of the {name}: {copied!r}")


def count_questions(hint: str) -> int:
    """How many questions or critiques a hint holds: the larger of its ``?``-terminated sentences and its
    non-empty lines (one critique per line is how a list of them is written)."""
    sentences = re.split(r"(?<=[.!?])\s+|\n+", hint)
    questions = sum(1 for s in sentences if s.strip().endswith("?"))
    lines = sum(1 for line in hint.splitlines() if line.strip())
    return max(questions, lines)


def vet_hint(text: str, diag: "Diagnosis", max_questions: int) -> LeakVerdict:
    """Phase 3 on one generated text: :func:`leak_filter` with the diagnosis's secrets, then at most
    ``max_questions`` questions/critiques (:func:`count_questions`) inside the tag."""
    verdict = leak_filter(
        text,
        gold=diag.gold,
        reference=diag.reference,
        peer=diag.peer,
        tool_args=diag.tool_args,
        choices=diag.choices,
        rtol=diag.rtol,
        atol=diag.atol,
    )
    if verdict.ok and count_questions(extract_hint(text) or "") > max_questions:
        return LeakVerdict(False, f"more than {max_questions} questions")
    return verdict


def redact_gold(text: str, gold: str, *, choices: Sequence[str] | None = None, rtol: float = 0.0,
                atol: float = 0.0) -> str:
    """``text`` with everything :func:`leak_filter` would call the gold replaced by ``[hidden]``: numbers equal
    to a gold value (any notation), the gold string, and for choice tasks the gold option's letter and text.

    Used on every free text rendered into a reflection prompt, so the policy never reads the answer there.
    """
    secret = _gold(gold, float(rtol), float(atol))
    spans = [(n.start, n.end) for n in _numbers(text) if secret.matches(n)]
    if choices:
        spans += _gold_option_spans(text, gold, choices)
    else:
        spans += _gold_string_spans(text, gold)
    return _replace_spans(text, spans)


def _gold_string_spans(text: str, gold: str) -> list[tuple[int, int]]:
    words = r"\s*".join(re.escape(ch) for ch in gold.strip() if not ch.isspace())
    pattern = re.compile(rf"(?<![A-Za-z0-9.]){words}(?![A-Za-z0-9]|\.\d)", re.IGNORECASE)
    return [m.span() for m in pattern.finditer(text)]


def _gold_option_spans(text: str, gold: str, choices: Sequence[str]) -> list[tuple[int, int]]:
    letter = gold.strip().strip("()").strip().upper()
    index = string.ascii_uppercase.find(letter) if len(letter) == 1 else -1
    names = {f"option {letter}"} | ({f"option text {choices[index]!r}"} if 0 <= index < len(choices) else set())
    return [(start, end) for start, end, what in _named_options(text, choices) if what in names]


def _replace_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Replace each span with one ``[hidden]``; overlapping or touching spans become one."""
    out, cursor = [], 0
    for start, end in sorted(spans):
        if start > cursor or not out:
            out += [text[cursor:start], REDACTED]
        cursor = max(cursor, end)
    return "".join(out) + text[cursor:]


# ==================================================================================================
# Phase 1: diagnose
# ==================================================================================================


@dataclass
class Attempt:
    """One rollout as reflection sees it.

    Attributes:
        answer: the verifier's extracted answer (None when there was none).
        correct: the verifier's outcome.
        feedback: the verifier's feedback text.
        transcript: the agent's side of the episode, short (assistant and tool turns).
    """

    answer: str | None
    correct: bool
    feedback: str
    transcript: str


@dataclass
class Diagnosis:
    """Everything reflection knows about one task group.

    ``gold``, ``tool_args``, ``choices``, ``rtol`` and ``atol`` are for the leak filter and redaction only: they
    are never rendered into a prompt. ``peer`` and ``reference`` are kept raw (the filter compares hints with
    them; the "no reflection" ablation shows them as they are); rendering redacts them.

    Attributes:
        task_id: the task instance id.
        task_prompt: the user prompt of the task.
        attempts: the group's attempts, feedback sanitised of the gold.
        peer: a successful transcript: the group's first correct attempt, else the peer buffer's latest.
        common_wrong: the most common wrong answer and its count (group and peer buffer), or None.
        reference: the task's worked reference, if it has one.
        gold: the gold answer.
        tool_args: ground-truth tool-argument values from the oracle that the task prompt does not show.
        choices: option texts of a choice task, else None.
        rtol, atol: the verifier's numeric tolerances (0 for exact verifiers).
    """

    task_id: str
    task_prompt: str
    attempts: list[Attempt]
    peer: str | None
    common_wrong: tuple[str, int] | None
    reference: str | None
    gold: str
    tool_args: list[str]
    choices: list[str] | None
    rtol: float = 0.0
    atol: float = 0.0


def diagnose(
    task: TaskInstance,
    attempts: list[Attempt],
    *,
    catalog: TaskCatalog | None = None,
    peer_buffer: PeerBuffer | None = None,
) -> Diagnosis:
    """Phase 1: gather one task group's diagnostics (docs/ALGORITHMS.md amrsd (a)).

    Args:
        task: the task instance the group attempted.
        attempts: its attempts, in rollout order.
        catalog: the catalog ``task`` came from; needed for tasks with tools (the oracle's tool calls give the
            ground-truth arguments the filter must catch).
        peer_buffer: peers of earlier steps; gives a successful peer when the group has none, and counts of wrong
            answers.

    Returns:
        A :class:`Diagnosis`.

    Raises:
        ValueError: ``task`` uses tools and no ``catalog`` was given.
    """
    if task.tools and catalog is None:
        raise ValueError(
            f"task {task.id} uses tools {list(task.tools)}: pass catalog= (the catalog it came from) so the "
            "leak filter knows the oracle's tool arguments"
        )
    choices = list(task.options) if task.options else None
    rtol = float(task.verifier_options.get("rtol", 0.0) or 0.0)
    atol = float(task.verifier_options.get("atol", 0.0) or 0.0)
    sanitised = [
        Attempt(a.answer, a.correct, redact_gold(a.feedback, task.answer, choices=choices, rtol=rtol, atol=atol),
                a.transcript)
        for a in attempts
    ]
    return Diagnosis(
        task_id=task.id,
        task_prompt=task.prompt,
        attempts=sanitised,
        peer=_successful_peer(task.id, attempts, peer_buffer),
        common_wrong=_common_wrong(task.id, attempts, peer_buffer),
        reference=task.reference,
        gold=task.answer,
        tool_args=_oracle_tool_args(task, catalog) if catalog is not None else [],
        choices=choices,
        rtol=rtol,
        atol=atol,
    )


def _successful_peer(task_id: str, attempts: list[Attempt], peer_buffer: PeerBuffer | None) -> str | None:
    for attempt in attempts:
        if attempt.correct:
            return attempt.transcript
    episode = peer_buffer.successful_peer(task_id) if peer_buffer is not None else None
    return episode.transcript if episode is not None else None


def _common_wrong(task_id: str, attempts: list[Attempt], peer_buffer: PeerBuffer | None) -> tuple[str, int] | None:
    """The most frequent wrong answer with its count. Envs may already have recorded this group into the buffer,
    so a count is the larger of the group's and the buffer's, never their sum (ties: the answer seen first)."""
    group = collections.Counter(a.answer for a in attempts if not a.correct and a.answer)
    episodes = peer_buffer.episodes(task_id) if peer_buffer is not None else []
    buffered = collections.Counter(e.answer for e in episodes if not e.correct and e.answer)
    merged = {answer: max(group[answer], buffered[answer]) for answer in [*group, *buffered]}
    if not merged:
        return None
    answer = max(merged, key=lambda a: merged[a])
    return answer, merged[answer]


def _oracle_tool_args(task: TaskInstance, catalog: TaskCatalog) -> list[str]:
    """The oracle's tool-argument values the prompt does not already show: strings (whitespace collapsed) not
    found in the prompt, numeric values the prompt lacks, and numbers of 2+ digits inside string values that the
    prompt lacks (the intermediate ``1550`` of ``1550 * 5 + 1``; not the ``0`` and ``1`` of a program)."""
    from amrsd_envs.oracle import oracle_messages
    from amrsd_envs.toolcalls import parse_tool_calls

    prompt_squeezed = re.sub(r"\s+", "", task.prompt).lower()
    prompt_values = {n.value for n in _numbers(task.prompt)}
    found: list[str] = []
    for message in oracle_messages(task, catalog):
        for call in parse_tool_calls(message).calls:
            for leaf in _leaves(call.arguments):
                text = re.sub(r"\s+", " ", str(leaf)).strip()
                if isinstance(leaf, str) and re.sub(r"\s+", "", text).lower() not in prompt_squeezed:
                    found.append(text)
                found += [
                    text[n.start : n.end]
                    for n in _numeral_numbers(text)
                    if n.primary and n.value not in prompt_values
                    and (not isinstance(leaf, str) or sum(ch.isdigit() for ch in text[n.start : n.end]) >= 2)
                ]
    return list(dict.fromkeys(a for a in found if a))


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        yield value


def raw_context(diag: Diagnosis) -> str | None:
    """The teacher context of the "no reflection" ablation (``reflection.source: raw``): the raw reference if the
    task has one, else the raw successful peer transcript, else None. Unvetted on purpose."""
    return diag.reference if diag.reference else diag.peer


# ==================================================================================================
# Prompt templates
# ==================================================================================================


@dataclass(frozen=True)
class MessageTemplate:
    """A system + user message pair with ``{placeholders}`` (one ``reflect_*.txt`` file)."""

    system: str
    user: str

    def render(self, values: dict[str, str]) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system.format(**values)},
            {"role": "user", "content": self.user.format(**values)},
        ]


_REFLECT_COMMON = ("task", "common_wrong", "peer", "reference", "max_questions")
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "reflect_group.txt": (*_REFLECT_COMMON, "attempts", "wrong_attempt"),
    "reflect_rollout.txt": (*_REFLECT_COMMON, "attempt"),
    "teacher_context.txt": ("prompt", "hint"),
}
"""Every template file and the placeholders it must use (each at least once, no others)."""


@dataclass(frozen=True)
class PromptTemplates:
    """The reflection and teacher-context templates (see ``amrsd_train/prompts/README.md``).

    Attributes:
        reflect_group: asks for one hint for a whole group.
        reflect_rollout: asks for one critique of one attempt.
        teacher_context: how a hint is appended to the task prompt for the teacher; starts with ``{prompt}``.
        source: the folder they were read from.
    """

    reflect_group: MessageTemplate
    reflect_rollout: MessageTemplate
    teacher_context: str
    source: str

    @classmethod
    def load(cls, prompts_dir: str | None = None) -> "PromptTemplates":
        """Read and check the three templates from ``prompts_dir`` (default: the shipped ``amrsd_train/prompts``).

        Raises:
            ValueError: a file is missing or unreadable, a reflect file lacks its ``[system]``/``[user]`` sections,
                a placeholder is unknown, missing or not plain, or ``teacher_context.txt`` does not start with
                ``{prompt}``; the message names the file and the placeholder.
        """
        folder = Path(prompts_dir).expanduser() if prompts_dir is not None else PROMPTS_DIR
        texts = {name: _read_template(folder / name) for name in PLACEHOLDERS}
        teacher = texts["teacher_context.txt"]
        if not teacher.startswith("{prompt}"):
            raise ValueError(
                f"{folder / 'teacher_context.txt'}: must start with {{prompt}} so the teacher's prompt differs from "
                "the student's only by appended text; move the other text after it"
            )
        return cls(
            reflect_group=_message_template(folder / "reflect_group.txt", texts["reflect_group.txt"]),
            reflect_rollout=_message_template(folder / "reflect_rollout.txt", texts["reflect_rollout.txt"]),
            teacher_context=teacher,
            source=str(folder),
        )


def _read_template(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(
            f"cannot read prompt template {path}: {exc.strerror or exc}; every prompts_dir needs "
            f"{', '.join(PLACEHOLDERS)} (copy them from {PROMPTS_DIR})"
        ) from None
    text = text[:-1] if text.endswith("\n") else text  # the file's final newline is not part of the prompt
    _check_placeholders(path, text, PLACEHOLDERS[path.name])
    return text


def _check_placeholders(path: Path, text: str, required: tuple[str, ...]) -> None:
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; write a literal brace as '{{{{' or '}}}}'") from None
    for name, spec, conversion in fields:
        if name not in required:
            raise ValueError(f"{path}: unknown placeholder {{{name}}}; this file may use {{{'}, {'.join(required)}}}")
        if spec or conversion:
            raise ValueError(f"{path}: placeholder {{{name}}} must be plain (no !conversion or :format)")
    missing = [name for name in required if name not in {f[0] for f in fields}]
    if missing:
        raise ValueError(
            f"{path}: missing placeholder {{{missing[0]}}}; this file must use {{{'}, {'.join(required)}}}"
        )


def _message_template(path: Path, text: str) -> MessageTemplate:
    match = re.fullmatch(r"\[system\]\n(?P<system>.*?)\n\[user\]\n(?P<user>.*)", text, re.DOTALL)
    if match is None:
        raise ValueError(f"{path}: expected a '[system]' line, the system message, a '[user]' line, the user message")
    return MessageTemplate(system=match["system"].strip(), user=match["user"].strip())


# ==================================================================================================
# Phase 2: the reflection prompt and the teacher context
# ==================================================================================================

DETAIL_CHARS = 240
"""Default length cap of each transcript, peer, reference and feedback text in a reflection prompt."""


def _clip(text: str, chars: int) -> str:
    """``text`` cut to ``chars`` characters, keeping its head and tail (where the answer and the mistake are)."""
    text = " ".join(text.split())
    if chars <= 0:
        return "(omitted)"
    if len(text) <= chars:
        return text
    half = max(chars // 2 - 3, 1)
    return f"{text[:half]} ... {text[-half:]}"


def reflection_messages(
    diag: Diagnosis,
    templates: PromptTemplates,
    *,
    granularity: str = "group",
    attempt: int | None = None,
    max_questions: int = 3,
    detail_chars: int = DETAIL_CHARS,
) -> list[dict[str, str]]:
    """Phase 2's prompt: the chat messages (system + user) asking the policy for a ``<hint>``.

    Every free text (answers, feedback, transcripts, peer, reference, common wrong answer) is redacted of the gold
    (:func:`redact_gold`) and clipped to ``detail_chars``; the task prompt is shown as the student saw it.

    Args:
        diag: the group's diagnosis.
        templates: the loaded templates.
        granularity: ``group`` (one hint from all attempts) or ``rollout`` (a critique of attempt ``attempt``).
        attempt: with ``rollout``, the index into ``diag.attempts``; must be None with ``group``.
        max_questions: the limit stated to the policy.
        detail_chars: length cap of each free text (0 leaves them out).

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``; render with ``add_generation_prompt=True``.

    Raises:
        ValueError: an unknown granularity, or an attempt index that does not fit it.
    """
    if granularity not in ("group", "rollout"):
        raise ValueError(f"granularity must be 'group' or 'rollout', got {granularity!r}")
    if (granularity == "rollout") != (attempt is not None):
        raise ValueError("give attempt= (an index into diag.attempts) with granularity='rollout', and only then")
    if attempt is not None and not 0 <= attempt < len(diag.attempts):
        raise ValueError(f"attempt {attempt} out of range: the diagnosis has {len(diag.attempts)} attempts")

    def hide(text: str | None) -> str:
        if not text:
            return NULL_HINT
        return _clip(redact_gold(text, diag.gold, choices=diag.choices, rtol=diag.rtol, atol=diag.atol), detail_chars)

    wrong = diag.common_wrong
    values = {
        "task": diag.task_prompt.strip(),
        "common_wrong": f"{hide(wrong[0])}, given {'once' if wrong[1] == 1 else f'{wrong[1]} times'}"
        if wrong else NULL_HINT,
        "peer": hide(diag.peer),
        "reference": hide(diag.reference),
        "max_questions": str(max_questions),
    }
    if attempt is None:
        outcomes = collections.Counter(_outcome(a, hide) for a in diag.attempts)  # keeps first-seen order
        values["attempts"] = "\n".join(
            f"- {text}" + (f" ({count} attempts)" if count > 1 else "") for text, count in outcomes.items()
        ) or NULL_HINT
        wrong_one = _typical_wrong(diag)
        values["wrong_attempt"] = hide(wrong_one.transcript) if wrong_one is not None else NULL_HINT
        return templates.reflect_group.render(values)
    chosen = diag.attempts[attempt]
    values["attempt"] = f"{_outcome(chosen, hide)}\nWhat it did: {hide(chosen.transcript)}"
    return templates.reflect_rollout.render(values)


def _typical_wrong(diag: Diagnosis) -> Attempt | None:
    """The wrong attempt a group hint is most about: one giving the most common wrong answer, else the first wrong
    one (its transcript shows where the step went wrong; outcomes alone do not)."""
    wrong = [a for a in diag.attempts if not a.correct]
    if diag.common_wrong is not None:
        same = [a for a in wrong if a.answer == diag.common_wrong[0]]
        wrong = same or wrong
    return wrong[0] if wrong else None


def _outcome(attempt: Attempt, hide: Callable[[str | None], str]) -> str:
    """``correct``, or ``wrong, answered 12: <feedback>`` (answers of correct attempts are never shown)."""
    if attempt.correct:
        return "correct"
    answered = f"answered {hide(attempt.answer)}" if attempt.answer else "gave no answer"
    feedback = f": {hide(attempt.feedback)}" if attempt.feedback.strip() else ""
    return f"wrong, {answered}{feedback}"


def teacher_messages(
    opening: list[dict[str, str]], hint: str | None, templates: PromptTemplates
) -> list[dict[str, str]]:
    """The teacher's opening: a copy of the episode's ``opening`` whose last user message has the hint appended
    through ``teacher_context.txt``; ``hint=None`` appends the same template with ``(none)`` (CIG's null hint).

    The result differs from ``opening`` only by text appended to that message, so the rollout's tokens that follow
    the opening are scored in the same positions' context plus the hint.

    Raises:
        ValueError: ``opening`` has no user message.
    """
    index = next((i for i in range(len(opening) - 1, -1, -1) if opening[i].get("role") == "user"), None)
    if index is None:
        raise ValueError("the opening has no user message to append the hint to; pass the episode's [system, user]")
    out = [dict(message) for message in opening]
    shown = hint if hint is not None else NULL_HINT
    out[index]["content"] = templates.teacher_context.format(prompt=out[index]["content"], hint=shown)
    return out


# ==================================================================================================
# Phase 2 + 3: the Reflector
# ==================================================================================================


def reflection_jobs(diagnoses: Sequence[Diagnosis], granularity: str) -> list[tuple[Diagnosis, int | None]]:
    """The :meth:`Reflector.reflect` jobs for ``reflection.granularity``: ``group`` gives ``(diag, None)`` per
    diagnosis, ``rollout`` gives ``(diag, i)`` for each attempt ``i`` of each diagnosis."""
    if granularity == "group":
        return [(diag, None) for diag in diagnoses]
    if granularity == "rollout":
        return [(diag, i) for diag in diagnoses for i in range(len(diag.attempts))]
    raise ValueError(f"granularity must be 'group' or 'rollout', got {granularity!r}")


@dataclass
class HintResult:
    """What reflection produced for one job.

    Attributes:
        hint: the accepted hint (the text inside the tag), or None when every sample was rejected.
        samples: every raw generation, in order (empty when the prompt did not fit the context).
        verdicts: one :class:`LeakVerdict` per sample.
        prompt: the rendered reflection prompt (chat template applied), for the inspect page.
        tokens: token count of the accepted sample (0 when none).
    """

    hint: str | None
    samples: list[str] = field(default_factory=list)
    verdicts: list[LeakVerdict] = field(default_factory=list)
    prompt: str = ""
    tokens: int = 0


@dataclass(frozen=True)
class _Rendered:
    text: str
    ids: list[int] | None  # None: too long for the context even with details left out


class Reflector:
    """Phases 2 and 3 in batches: render every job's reflection prompt, sample all hints in one
    ``engine.generate`` call, vet them, and resample only the rejected ones, ``cfg.resamples`` more rounds.

    Args:
        engine: the policy's engine (current weights).
        tokenizer: its tokenizer (chat template included).
        cfg: the ``reflection:`` config.
        templates: the templates; default ``PromptTemplates.load(cfg.prompts_dir)``.
    """

    def __init__(self, engine: Engine, tokenizer: Any, cfg: ReflectionConfig, templates: PromptTemplates | None = None):
        if not isinstance(cfg, ReflectionConfig):
            raise TypeError(
                f"cfg must be a ReflectionConfig (the config's reflection: block), got {type(cfg).__name__}"
            )
        self.engine = engine
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.templates = templates if templates is not None else PromptTemplates.load(cfg.prompts_dir)
        self.context_len = _context_len(engine, tokenizer)

    def reflect(self, jobs: list[tuple[Diagnosis, int | None]], *, seed: int) -> list[HintResult]:
        """One :class:`HintResult` per job ``(diagnosis, attempt index or None for a group hint)``, in order.

        Round 0 samples every job with ``seed``; round ``r >= 1`` resamples the rejected ones with a seed derived
        from ``(seed, r)``. A job whose prompt cannot fit the context with room for ``hint_max_tokens`` (even with
        its details left out) gets no sample and hint None.
        """
        rendered = [self._render(diag, attempt) for diag, attempt in jobs]
        samples: list[list[str]] = [[] for _ in jobs]
        verdicts: list[list[LeakVerdict]] = [[] for _ in jobs]
        accepted: list[tuple[str, int] | None] = [None] * len(jobs)
        pending = [i for i, r in enumerate(rendered) if r.ids is not None]
        for round_index in range(1 + self.cfg.resamples):
            if not pending:
                break
            outputs = self.engine.generate([rendered[i].ids for i in pending], self._params(seed, round_index))
            for i, [completion] in zip(pending, outputs):
                verdict = vet_hint(completion.text, jobs[i][0], self.cfg.max_questions)
                samples[i].append(completion.text)
                verdicts[i].append(verdict)
                if verdict.ok:
                    accepted[i] = (extract_hint(completion.text) or "", len(completion.token_ids))
            pending = [i for i in pending if accepted[i] is None]
        return [
            HintResult(
                hint=accepted[i][0] if accepted[i] else None,
                samples=samples[i],
                verdicts=verdicts[i],
                prompt=rendered[i].text,
                tokens=accepted[i][1] if accepted[i] else 0,
            )
            for i in range(len(jobs))
        ]

    def _params(self, seed: int, round_index: int) -> SamplingParams:
        return SamplingParams(
            temperature=self.cfg.temperature,
            max_new_tokens=self.cfg.hint_max_tokens,
            stop_strings=(HINT_CLOSE,),
            seed=seed if round_index == 0 else _round_seed(seed, round_index),
        )

    def _render(self, diag: Diagnosis, attempt: int | None) -> _Rendered:
        """The chat-templated prompt and its ids, shortening the details until prompt + hint fit the context."""
        granularity = "group" if attempt is None else "rollout"
        text = ""
        for detail_chars in (DETAIL_CHARS, DETAIL_CHARS // 3, 0):
            messages = reflection_messages(
                diag, self.templates, granularity=granularity, attempt=attempt,
                max_questions=self.cfg.max_questions, detail_chars=detail_chars,
            )
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
            if self.context_len is None or len(ids) + self.cfg.hint_max_tokens <= self.context_len:
                return _Rendered(text, ids)
        return _Rendered(text, None)


def _round_seed(seed: int, round_index: int) -> int:
    """A seed for resample round ``round_index`` unrelated to ``seed + k`` (which the next step may use)."""
    digest = hashlib.blake2b(f"{seed}:resample:{round_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _context_len(engine: Engine, tokenizer: Any) -> int | None:
    """The engine's context length (``max_model_len``), else the tokenizer's when it is a real one, else None."""
    for limit in (getattr(engine, "max_model_len", None), getattr(tokenizer, "model_max_length", None)):
        if isinstance(limit, int) and 0 < limit < 10**7:
            return limit
    return None
