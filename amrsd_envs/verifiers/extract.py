"""Final-answer extraction shared by the math, numeric and choice verifiers.

Order (first that yields a non-empty answer wins):

1. the content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces; ``\\{`` and ``\\}`` are
   literal braces, not groups, so ``\\boxed{\\{1, 2\\}}`` yields ``\\{1, 2\\}``); a truncated box (no closing brace)
   is skipped;
2. the last line that starts with ``Answer:`` or ``Final answer:`` (case-insensitive; Markdown emphasis such as
   ``**Final Answer:**`` is tolerated);
3. the whole response, when it is a single line of at most 40 characters.

The result has math delimiters (``$...$``, ``\\(...\\)``, ``\\[...\\]``), surrounding Markdown emphasis and a trailing
period removed. Every step is linear in the response length, so a 1 MB response costs milliseconds, not minutes.
"""

from __future__ import annotations

import re

SHORT_ANSWER_CHARS = 40

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


def extract_answer(response: str) -> str | None:
    """The final answer in ``response`` (see the module docstring for the rules), or ``None`` when there is none."""
    if not isinstance(response, str):
        raise TypeError(f"extract_answer needs a str response, got {type(response).__name__}")
    for found in (find_last_boxed(response), find_answer_line(response)):
        if found is not None:
            cleaned = clean_answer(found)
            if cleaned:
                return cleaned
    stripped = response.strip()
    if stripped and len(stripped) <= SHORT_ANSWER_CHARS and "\n" not in stripped:
        cleaned = clean_answer(stripped)
        return cleaned or None
    return None
