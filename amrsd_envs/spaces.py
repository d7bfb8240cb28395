"""Gymnasium spaces of the text environments: a conversation (observation) and an utterance (action)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

ROLES = ("system", "user", "assistant", "tool")
_SAMPLE_CHARS = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789 +-*/=().,"))


class Utterance(spaces.Space[str]):
    """One assistant message: any ``str`` of at most ``max_length`` characters.

    ``sample()`` draws random printable text (it is for ``check_env`` and fuzzing, not a policy).
    """

    def __init__(self, max_length: int = 32_768, seed: int | np.random.Generator | None = None):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = max_length
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        n = int(self.np_random.integers(1, min(self.max_length, 64) + 1))
        return "".join(self.np_random.choice(_SAMPLE_CHARS, size=n))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"Utterance(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Utterance) and other.max_length == self.max_length


class Conversation(spaces.Space[list]):
    """A chat transcript: a list of ``{"role": ..., "content": str}`` dicts (OpenAI message format).

    Roles are ``system``, ``user``, ``assistant`` and ``tool`` (tool messages also carry ``name``). At most
    ``max_messages`` messages.
    """

    def __init__(self, max_messages: int = 256, seed: int | np.random.Generator | None = None):
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        self.max_messages = max_messages
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> list[dict[str, str]]:
        n = int(self.np_random.integers(2, 6))
        msgs = [{"role": "system", "content": "sampled"}]
        for k in range(n - 1):
            role = ("user", "assistant")[k % 2]
            length = int(self.np_random.integers(1, 40))
            msgs.append({"role": role, "content": "".join(self.np_random.choice(_SAMPLE_CHARS, size=length))})
        return msgs

    def contains(self, x: Any) -> bool:
        if not isinstance(x, (list, tuple)) or len(x) > self.max_messages:
            return False
        return all(_is_message(m) for m in x)

    def __repr__(self) -> str:
        return f"Conversation(max_messages={self.max_messages})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Conversation) and other.max_messages == self.max_messages


def _is_message(m: Any) -> bool:
    return (
        isinstance(m, dict)
        and m.get("role") in ROLES
        and isinstance(m.get("content"), str)
        and all(isinstance(k, str) for k in m)
    )


def copy_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy the caller may mutate without touching the env's transcript."""
    return [dict(m) for m in messages]
