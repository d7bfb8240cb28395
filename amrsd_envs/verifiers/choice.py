"""``choice``: multiple choice; the gold is a letter (A, B, C, ... in the order of ``options``).

The final answer (``\\boxed{}``, ``Answer:`` line or short response) names an option by letter (``B``, ``(B)``,
``b``, ``\\text{B}``, ``B) Paris``) or by its exact text (compared case-, space- and trailing-punctuation-
insensitively). An answer naming two different options (``B, C``; ``B) London`` when London is option C) is wrong:
listing every letter must not pay. In a longer final answer (``The answer is (B)``) the standalone capital letters
of valid options are the candidates.
"""

from __future__ import annotations

import re
import string
from typing import ClassVar

from pydantic import Field, field_validator

from amrsd_envs.verifiers.base import NO_ANSWER_FEEDBACK, BuiltinVerifier, Verification, VerifierOptions
from amrsd_envs.verifiers.extract import extract_answer

LETTERS = string.ascii_uppercase

_WRAP = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_SINGLE = re.compile(r"\(?\s*([A-Za-z])\s*\)?[.:)]?")
_LETTER_THEN_TEXT = re.compile(r"\(?([A-Z])[).:]\s*(.+)", re.DOTALL)
_STANDALONE = re.compile(r"(?<![A-Za-z'’])\(?([A-Z])\)?(?![A-Za-z'’])")
_WS = re.compile(r"\s+")


def normalize_option_text(s: str) -> str:
    """Lower-case, collapse whitespace, drop ``$`` and surrounding punctuation: how option texts are compared."""
    s = _WS.sub(" ", s.replace("$", "")).strip().lower()
    return s.strip(string.punctuation + " ")


class ChoiceOptions(VerifierOptions):
    """Options of the ``choice`` verifier."""

    options: list[str] = Field(
        default_factory=list,
        description="The option texts in order; their letters are A, B, C, ... When empty, any letter A-Z is a valid "
        "option and only letters are matched.",
    )

    @field_validator("options")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(v) > len(LETTERS):
            raise ValueError(f"at most {len(LETTERS)} options (letters A-Z), got {len(v)}")
        normed = [normalize_option_text(o) for o in v]
        if any(not n for n in normed):
            raise ValueError("option texts must be non-empty")
        if len(set(normed)) != len(normed):
            raise ValueError("option texts must differ after normalisation (case, spaces, punctuation)")
        return v


class ChoiceVerifier(BuiltinVerifier):
    """The named option's letter equals the gold letter."""

    name: ClassVar[str] = "choice"
    options_model: ClassVar[type[VerifierOptions]] = ChoiceOptions

    def check(self, gold: str, response: str, options: ChoiceOptions) -> Verification:  # type: ignore[override]
        valid = LETTERS[: len(options.options)] if options.options else LETTERS
        gold_letter = gold.strip().strip("()").strip().upper()
        if len(gold_letter) != 1 or gold_letter not in valid:
            raise ValueError(
                f"choice verifier: the gold must be one option letter in {valid[0]}-{valid[-1]}, got {gold!r}"
            )
        extracted = extract_answer(response)
        if extracted is None:
            return Verification.wrong(None, NO_ANSWER_FEEDBACK)
        named = named_options(extracted, options.options, valid)
        if len(named) > 1:
            return Verification.wrong(extracted, "named several different options; name exactly one")
        if not named:
            return Verification.wrong(extracted, "could not tell which option the answer names (give its letter)")
        if named == {gold_letter}:
            return Verification.right(extracted)
        return Verification.wrong(extracted, "not the correct option")


def named_options(answer: str, texts: list[str], valid: str) -> set[str]:
    """The set of option letters ``answer`` names (empty: none recognised; more than one: ambiguous)."""
    core = answer
    for _ in range(2):
        core = _WRAP.sub(r"\1", core)
    core = core.strip().strip("*").strip()
    by_text = {normalize_option_text(t): LETTERS[i] for i, t in enumerate(texts)}

    m = _SINGLE.fullmatch(core)
    if m and m.group(1).upper() in valid:
        return {m.group(1).upper()}
    if normalize_option_text(core) in by_text:
        return {by_text[normalize_option_text(core)]}
    m = _LETTER_THEN_TEXT.fullmatch(core)
    if m and m.group(1) in valid:
        letter = m.group(1)
        text_letter = by_text.get(normalize_option_text(m.group(2)))
        return {letter, text_letter} if text_letter else {letter}
    return {x for x in _STANDALONE.findall(core) if x in valid}
