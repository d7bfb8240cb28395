"""``regex``: the final answer matches a pattern declared in the task.

The gold is used through the placeholder ``{gold}``: every literal ``{gold}`` in ``pattern`` is replaced by
``re.escape(gold)`` before compiling, so ``pattern: "(?:x\\s*=\\s*)?{gold}"`` accepts ``x = 42`` for gold ``42``. A
pattern without the placeholder ignores the gold. (``str.format`` is not used: it would collide with regex
quantifiers such as ``\\d{2,3}``.)

The text matched is the extracted final answer by default (``target: answer``: no final answer -> incorrect) or the
whole response (``target: response``). ``fullmatch: true`` (the default) requires the whole text to match, which is
what stops a model listing every candidate; with ``false`` a match anywhere (``re.search``) is enough.
"""

from __future__ import annotations

import re
from functools import lru_cache, reduce
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from amrsd_envs.verifiers.base import (
    NO_ANSWER_FEEDBACK,
    BuiltinVerifier,
    Verification,
    VerifierOptions,
)
from amrsd_envs.verifiers.extract import extract_answer

GOLD_PLACEHOLDER = "{gold}"
RegexFlag = Literal["IGNORECASE", "MULTILINE", "DOTALL"]


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str, gold: str, flags: tuple[RegexFlag, ...]) -> re.Pattern[str]:
    """``pattern`` with ``{gold}`` replaced by the escaped gold, compiled with ``flags``."""
    bits = reduce(lambda acc, name: acc | getattr(re, name), flags, 0)
    return re.compile(pattern.replace(GOLD_PLACEHOLDER, re.escape(gold)), bits)


class RegexOptions(VerifierOptions):
    """Options of the ``regex`` verifier."""

    # flags is declared before pattern so the pattern validator can compile with them.
    flags: list[RegexFlag] = Field(default_factory=list, description="re flags: IGNORECASE, MULTILINE, DOTALL.")
    pattern: str = Field(
        description="A Python regular expression; each literal '{gold}' is replaced by the escaped gold answer.",
    )
    fullmatch: bool = Field(
        True, description="Require the whole target text to match (re.fullmatch); False: a match anywhere (re.search)."
    )
    target: Literal["answer", "response"] = Field(
        "answer",
        description="What is matched: the extracted final answer ('answer') or the whole response ('response').",
    )
    max_chars: int = Field(
        10_000, ge=1, description="Longest target text matched at all; longer is incorrect ('answer too long')."
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str, info: ValidationInfo) -> str:
        if not v:
            raise ValueError("pattern must not be empty")
        try:
            compile_pattern(v, "gold", tuple(info.data.get("flags", ())))
        except re.error as exc:
            raise ValueError(f"{v!r} is not a valid regular expression: {exc}") from None
        return v


class RegexVerifier(BuiltinVerifier):
    """The answer (or response) matches ``pattern`` (with the gold substituted for ``{gold}``)."""

    name: ClassVar[str] = "regex"
    options_model: ClassVar[type[VerifierOptions]] = RegexOptions

    def check(self, gold: str, response: str, options: RegexOptions) -> Verification:  # type: ignore[override]
        extracted = extract_answer(response)
        text = extracted if options.target == "answer" else response
        if text is None:
            return Verification.wrong(None, NO_ANSWER_FEEDBACK)
        if len(text) > options.max_chars:
            return Verification.too_long(text, "max_chars")
        pattern = compile_pattern(options.pattern, gold, tuple(options.flags))
        matched = pattern.fullmatch(text) if options.fullmatch else pattern.search(text)
        if matched:
            return Verification.right(extracted if extracted is not None else text)
        return Verification.wrong(extracted, "does not match the expected answer format or value")
