"""The verifier contract: the ``Verification`` result, the ``Verifier`` protocol, the registry and ``check``.

A verifier kind is an object with a ``name``, an ``options_model`` (a pydantic model with ``extra="forbid"``; a task
YAML's ``verifier: {type: <name>, ...}`` block is validated with it at load time) and
``check(gold, response, options) -> Verification``. ``check(kind, gold, response, **options)`` is the one entry point
the env uses: it looks the kind up, validates the options and calls the kind's ``check``.

Feedback is written for the model (it feeds meta-reflection): it says what was wrong and never contains the gold
answer. Built-in kinds also keep digits out of feedback, so no number the gold could be made of leaks through it.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CORRECT_FEEDBACK = "correct"
NO_ANSWER_FEEDBACK = "no final answer found (expected \\boxed{...} or an 'Answer:' line)"
NOT_EQUAL_FEEDBACK = "not equal to the reference"
TOO_LONG_FEEDBACK = "answer too long"
# An over-long answer is kept only as a prefix in `extracted`, so a 1 MB response does not travel into logs/peers.
TRUNCATED_EXTRACT_CHARS = 200


class Verification(BaseModel):
    """The verdict on one response.

    ``correct`` and ``score`` agree (1.0 iff correct: no partial credit, so a reward cannot be farmed by
    half-answers); ``extracted`` is the final answer the verifier read from the response (``None`` when it found
    none); ``feedback`` says what was wrong, in words the policy can use, and never contains the gold answer.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    correct: bool = Field(description="Whether the response's final answer matches the reference.")
    score: float = Field(description="The reward: 1.0 when correct, else 0.0.")
    extracted: str | None = Field(description="The final answer read from the response; None when none was found.")
    feedback: str = Field(description="What was wrong (or 'correct'); never contains the gold answer.")

    @model_validator(mode="after")
    def _score_matches_correct(self) -> Verification:
        if self.score != (1.0 if self.correct else 0.0):
            raise ValueError(
                f"score must be 1.0 when correct and 0.0 otherwise (got correct={self.correct}, score={self.score}); "
                "verifiers give no partial credit"
            )
        return self

    @classmethod
    def right(cls, extracted: str | None) -> Verification:
        """A correct verdict for the answer ``extracted``."""
        return cls(correct=True, score=1.0, extracted=extracted, feedback=CORRECT_FEEDBACK)

    @classmethod
    def too_long(cls, extracted: str | None, limit_name: str) -> Verification:
        """An incorrect verdict for an answer over the ``limit_name`` option; ``extracted`` keeps only a prefix."""
        if extracted is not None and len(extracted) > TRUNCATED_EXTRACT_CHARS:
            extracted = extracted[:TRUNCATED_EXTRACT_CHARS] + " [truncated]"
        return cls(correct=False, score=0.0, extracted=extracted, feedback=f"{TOO_LONG_FEEDBACK} (over {limit_name})")

    @classmethod
    def wrong(cls, extracted: str | None, feedback: str) -> Verification:
        """An incorrect verdict; ``feedback`` says why (and must not contain the gold)."""
        return cls(correct=False, score=0.0, extracted=extracted, feedback=feedback)


class VerifierOptions(BaseModel):
    """Base of every kind's options model: unknown keys are errors (a typo in a YAML fails at load), frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@runtime_checkable
class Verifier(Protocol):
    """One verifier kind. ``check`` gets options already validated by ``options_model``."""

    name: str
    options_model: type[BaseModel]

    def check(self, gold: str, response: str, options: Any) -> Verification: ...


class UnknownVerifierError(KeyError, ValueError):
    """An unknown verifier kind. A ``KeyError`` for mapping semantics and a ``ValueError`` for callers that treat
    it as bad input; the message lists the valid kinds."""

    def __str__(self) -> str:  # KeyError's str() would repr() the message
        return str(self.args[0]) if self.args else ""


class VerifierRegistry(Mapping[str, Verifier]):
    """Kind name -> verifier. Registering a name twice raises; looking up an unknown name lists the valid ones."""

    def __init__(self) -> None:
        self._items: dict[str, Verifier] = {}
        self._lock = threading.Lock()

    def register(self, verifier: Verifier) -> Verifier:
        """Add ``verifier`` under ``verifier.name``; raises ``ValueError`` if the name is taken or the object does
        not have the verifier shape."""
        name = getattr(verifier, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a verifier needs a non-empty str `name`; got {name!r} on {type(verifier).__name__}")
        model = getattr(verifier, "options_model", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"verifier {name!r}: `options_model` must be a pydantic BaseModel subclass, got {model!r}")
        if model.model_config.get("extra") != "forbid":
            raise TypeError(
                f"verifier {name!r}: options_model {model.__name__} must set model_config extra='forbid' "
                "(subclass VerifierOptions) so unknown options fail at load"
            )
        if not callable(getattr(verifier, "check", None)):
            raise TypeError(f"verifier {name!r}: `check(gold, response, options)` is missing")
        with self._lock:
            if name in self._items:
                raise ValueError(
                    f"verifier {name!r} is already registered ({type(self._items[name]).__name__}); pick another name"
                )
            self._items[name] = verifier
        return verifier

    def __getitem__(self, name: str) -> Verifier:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownVerifierError(_unknown_message("verifier kind", name, list(self._items))) from None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"VerifierRegistry({sorted(self._items)})"


VERIFIERS = VerifierRegistry()


def register_verifier(verifier: Verifier) -> Verifier:
    """Register a verifier kind (e.g. ``world_state``, ``code_tests``). A duplicate name raises ``ValueError``."""
    return VERIFIERS.register(verifier)


def _unknown_message(what: str, name: object, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}; valid: {', '.join(sorted(valid)) or '(none registered)'}{hint}"


def parse_options(kind: str, options: Mapping[str, Any]) -> BaseModel:
    """Validate ``options`` with kind ``kind``'s options model.

    Raises ``ValueError`` naming the kind, each bad option and the valid option names (unknown kind: the valid
    kinds).
    """
    verifier = VERIFIERS[kind]
    model = verifier.options_model
    try:
        return model(**dict(options))
    except ValidationError as exc:
        valid = list(model.model_fields)
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "options"
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(err["loc"][0]), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown option {loc!r}{hint}")
            else:
                problems.append(f"option {loc!r}: {err['msg']}")
        raise ValueError(
            f"verifier {kind!r}: {'; '.join(problems)}; valid options: {', '.join(valid) or '(none)'}"
        ) from None


def check(kind: str, gold: str, response: str, **options: Any) -> Verification:
    """Verify ``response`` against ``gold`` with verifier kind ``kind`` and its ``options``.

    Never raises on model text; raises ``ValueError`` on an unknown kind, a bad option or a gold the kind cannot
    use (those are task-spec errors), ``TypeError`` when gold or response is not a string.
    """
    verifier = VERIFIERS[kind]
    if not isinstance(gold, str):
        raise TypeError(f"verifier {kind!r}: gold must be a str, got {type(gold).__name__}; convert it with str()")
    if not isinstance(response, str):
        raise TypeError(f"verifier {kind!r}: response must be a str, got {type(response).__name__}")
    parsed = parse_options(kind, options)
    return verifier.check(gold, response, parsed)


class BuiltinVerifier:
    """Shared shape of the built-in kinds: class attributes ``name`` and ``options_model``."""

    name: ClassVar[str]
    options_model: ClassVar[type[VerifierOptions]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
