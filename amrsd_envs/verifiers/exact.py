"""``exact``: the final answer equals the gold string after the chosen normalisations.

The answer compared is the extracted final answer (``\\boxed{}``, ``Answer:`` line, short response) or, when there
is none, the whole response. Normalisations apply to both sides in a fixed order, whatever order the list gives:
``lower`` -> ``strip_punctuation`` -> ``collapse_whitespace`` -> ``strip``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import ClassVar, Literal

from pydantic import Field

from amrsd_envs.verifiers.base import NOT_EQUAL_FEEDBACK, BuiltinVerifier, Verification, VerifierOptions
from amrsd_envs.verifiers.extract import extract_answer

Normalization = Literal["strip", "lower", "collapse_whitespace", "strip_punctuation"]
_WS = re.compile(r"\s+")


def _strip_punctuation(s: str) -> str:
    # Unicode categories P* (punctuation) and S* (symbols such as $ + ^), so curly quotes and dashes go too.
    return "".join(ch for ch in s if not unicodedata.category(ch).startswith(("P", "S")))


def normalize_text(s: str, steps: list[Normalization] | tuple[Normalization, ...]) -> str:
    """Apply ``steps`` to ``s`` in the canonical order lower, strip_punctuation, collapse_whitespace, strip."""
    chosen = set(steps)
    if "lower" in chosen:
        s = s.casefold()
    if "strip_punctuation" in chosen:
        s = _strip_punctuation(s)
    if "collapse_whitespace" in chosen:
        s = _WS.sub(" ", s)
    if "strip" in chosen:
        s = s.strip()
    return s


class ExactOptions(VerifierOptions):
    """Options of the ``exact`` verifier."""

    normalize: list[Normalization] = Field(
        default_factory=lambda: ["strip", "collapse_whitespace"],
        description="Normalisations applied to both the answer and the gold before comparing: strip (ends), lower "
        "(case-fold), collapse_whitespace (runs of whitespace -> one space), strip_punctuation (Unicode punctuation "
        "and symbols removed).",
    )


class ExactVerifier(BuiltinVerifier):
    """String equality after normalisation."""

    name: ClassVar[str] = "exact"
    options_model: ClassVar[type[VerifierOptions]] = ExactOptions

    def check(self, gold: str, response: str, options: ExactOptions) -> Verification:  # type: ignore[override]
        extracted = extract_answer(response)
        answer = extracted if extracted is not None else response
        if normalize_text(answer, options.normalize) == normalize_text(gold, options.normalize):
            return Verification.right(answer)
        return Verification.wrong(answer, NOT_EQUAL_FEEDBACK)
