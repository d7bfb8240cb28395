"""Final-answer extraction shared by the math, numeric and choice verifiers.

Order (first that yields a non-empty answer wins):

1. the content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces; ``\\{`` and ``\\}`` are
   literal braces, not groups, so ``\\boxed{\\{1, 2\\}}`` yields ``\\{1, 2\\}``); a truncated box (no closing brace)
   is skipped;
2. the last line that starts with ``Answer:`` or ``Final answer:`` (case-insensitive; Markdown emphasis such as
   ``**Final Answer:**`` is tolerated);
3. the whole response, when it is a single line of at most 40 characters.

Verifiers add a fallback after these three: the math verifier lets Math-Verify's own ``parse`` read the whole
response (see ``math_verifier``); the numeric verifier, which must keep units Math-Verify's normalisation drops,
reads :func:`loose_answer_candidates` (Math-Verify's priority order, implemented here without sympy).

The result has math delimiters (``$...$``, ``\\(...\\)``, ``\\[...\\]``), surrounding Markdown emphasis and a trailing
period removed. Every step is linear in the response length, so a 1 MB response costs milliseconds, not minutes.
"""

from __future__ import annotations

import re
from typing import Literal

SHORT_ANSWER_CHARS = 40

AnswerSource = Literal["boxed", "answer_line", "short_response"]

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A backslash escapes the next character (so \{ and \} are not group braces); bare braces are group delimiters.
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
# Only the prefix is a regex; the rest of the line is taken with str.strip (a lazy `.*?` followed by a
# character-class tail would backtrack quadratically on a long line of spaces).
_ANSWER_PREFIX = re.compile(r"[\s*_#>]*(?:final\s+answer|answer)[\s*_]*[:：]", re.IGNORECASE)
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"), ("`", "`"))


def find_last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}``/``\\fbox{...}`` with non-empty content, else ``None``."""
    opens = [m.end() - 1 for m in _BOX_OPEN.finditer(text)]
    if not opens:
        return None
    # One pass from the first box: map every group-opening brace to its closing brace.
    closing: dict[int, int] = {}
    stack: list[int] = []
    for tok in _BRACE_TOKEN.finditer(text, opens[0]):
        ch = tok.group()
        if ch == "{":
            stack.append(tok.start())
        elif ch == "}" and stack:
            closing[stack.pop()] = tok.start()
    for brace in reversed(opens):
        end = closing.get(brace)
        if end is not None:
            content = text[brace + 1 : end].strip()
            if content:
                return content
    return None


def find_answer_line(text: str) -> str | None:
    """The answer on the last non-empty ``Answer:`` / ``Final answer:`` line, else ``None``."""
    for line in reversed(text.splitlines()):
        if ":" not in line and "：" not in line:
            continue
        m = _ANSWER_PREFIX.match(line)
        if m:
            answer = line[m.end() :].strip(" \t*_")
            if answer:
                return answer
    return None


def clean_answer(answer: str) -> str:
    """Strip whitespace, math delimiters, Markdown emphasis and a trailing period (repeatedly, outside in)."""
    prev = None
    s = answer
    while s != prev:
        prev = s
        s = s.strip()
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1].rstrip()
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)]
                break
    return s


def extract_answer_with_source(response: str) -> tuple[str, AnswerSource] | None:
    """The final answer in ``response`` and which rule found it (``"boxed"``, ``"answer_line"`` or
    ``"short_response"``, steps 1-3 of the module docstring), or ``None`` when there is none."""
    if not isinstance(response, str):
        raise TypeError(f"extract_answer needs a str response, got {type(response).__name__}")
    found: str | None
    source: AnswerSource
    for found, source in ((find_last_boxed(response), "boxed"), (find_answer_line(response), "answer_line")):
        if found is not None:
            cleaned = clean_answer(found)
            if cleaned:
                return cleaned, source
    stripped = response.strip()
    if stripped and len(stripped) <= SHORT_ANSWER_CHARS and "\n" not in stripped:
        cleaned = clean_answer(stripped)
        return (cleaned, "short_response") if cleaned else None
    return None


def extract_answer(response: str) -> str | None:
    """The final answer in ``response`` (see the module docstring for the rules), or ``None`` when there is none."""
    found = extract_answer_with_source(response)
    return None if found is None else found[0]


# --- Math-Verify-ordered candidates, for verifiers that cannot hand the response to Math-Verify ------------------

# The math environments Math-Verify's LatexExtractionConfig reads (display $$..$$ and \[..\] may span lines; inline
# $..$ and \(..\) may not). Lengths are bounded so a scan stays linear on degenerate text.
_MATH_ENV = re.compile(
    r"\$\$(?P<dd>[^$]{1,2000}?)\$\$"
    r"|\\\[(?P<db>(?:[^\\]|\\(?!\])){1,2000}?)\\\]"
    r"|(?<![\\\d$])\$(?P<id>(?:\\\$|[^\n$]){1,500}?)(?<!\\)\$"
    r"|\\\((?P<ip>(?:[^\\\n]|\\(?!\))){1,500}?)\\\)"
)
# A bare number (Math-Verify's ExprExtractionConfig numbers: thousands separators, decimals), then the rest of its
# clause (where a unit would be written).
_BARE_NUMBER = re.compile(r"(?<![\w.\\])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_CLAUSE_END = re.compile(r"[,;:!?()\n$]|\\[\])]|\.(?:\s|$)|\s(?:and|or|but|which|so)\s")
_FINAL_ANSWER_IS = re.compile(r"final answer.{0,100}?\sis:?\s*", re.IGNORECASE | re.DOTALL)
_ANSWER_WORD = re.compile(r"answer:?", re.IGNORECASE)
_LAST_EQUALS = re.compile(r"(?<![\\<>!])=|\\approx|≈")
LOOSE_CLAUSE_CHARS = 40


def _candidate_at(text: str, m: re.Match[str]) -> str:
    """The answer text of one match: an environment's content after its last ``=``/``\\approx`` (as Math-Verify
    takes the last equation), or a bare number with the rest of its clause."""
    env = next((g for g in m.groups() if g is not None), None) if m.re is _MATH_ENV else None
    if env is not None:
        parts = _LAST_EQUALS.split(env) if "," not in env else [env]
        return clean_answer(parts[-1])
    tail = text[m.end() : m.end() + LOOSE_CLAUSE_CHARS]
    end = _CLAUSE_END.search(tail)
    return (m.group() + (tail[: end.start()] if end else tail)).strip()


def _first_after(text: str, start: int, window: int) -> str | None:
    """The first math environment or bare number starting within ``window`` characters of ``start``."""
    found = [m for m in (p.search(text, start, start + window + 2000) for p in (_MATH_ENV, _BARE_NUMBER)) if m]
    found = [m for m in found if m.start() <= start + window]
    if not found:
        return None
    return _candidate_at(text, min(found, key=lambda m: m.start()))


def loose_answer_candidates(response: str) -> list[str]:
    """Answer candidates in ``response`` in Math-Verify's default extraction order, for a verifier that reads them
    itself (the numeric one: Math-Verify's LaTeX normalisation drops units).

    Priority groups, as Math-Verify's ``LatexExtractionConfig`` + ``ExprExtractionConfig``: (1) what follows
    ``final answer ... is``; (2) what follows the word ``answer`` (within 50 characters); (3) any math environment
    (``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]``: its content after the last ``=``) or bare number (with the
    rest of its clause). Within a group the rightmost comes first. The caller takes the first candidate it can read
    (as Math-Verify takes the first that parses), never the first that matches the gold.
    """
    groups: list[list[tuple[int, str]]] = [[], [], []]
    for m in _FINAL_ANSWER_IS.finditer(response):
        found = _first_after(response, m.end(), 0)
        if found:
            groups[0].append((m.end(), found))
    for m in _ANSWER_WORD.finditer(response):
        found = _first_after(response, m.end(), 50)
        if found:
            groups[1].append((m.end(), found))
    for pattern in (_MATH_ENV, _BARE_NUMBER):
        groups[2].extend((m.end(), _candidate_at(response, m)) for m in pattern.finditer(response))
    out: list[str] = []
    for group in groups:
        out.extend(c for _, c in sorted(group, key=lambda item: -item[0]) if c)
    return out
