"""Generation + scoring backends behind one protocol (``Engine``), chosen by name through a registry.

``make_engine("hf", model=..., ...)`` builds one; a backend module is imported only when its kind is
asked for, so ``vllm`` (heavy, optional) costs nothing to users of ``hf``. New backends call
:func:`register_engine` with a factory or a ``"module:attribute"`` path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from amrsd_train.engines.base import Completion, Engine, FinishReason, SamplingParams

__all__ = [
    "Completion",
    "Engine",
    "FinishReason",
    "SamplingParams",
    "engine_kinds",
    "make_engine",
    "register_engine",
]

EngineFactory = Callable[..., Engine]

# kind -> factory, or "module:attribute" of one (imported on first use).
_REGISTRY: dict[str, EngineFactory | str] = {
    "hf": "amrsd_train.engines.hf:HFEngine",
    "vllm": "amrsd_train.engines.vllm:VLLMEngine",
    "openai": "amrsd_train.engines.openai:OpenAIEngine",
}


def register_engine(kind: str, factory: EngineFactory | str) -> None:
    """Register an engine backend under ``kind``.

    Args:
        kind: the name ``make_engine`` and configs use.
        factory: a callable returning an ``Engine``, or its ``"module:attribute"`` import path.

    Raises:
        ValueError: ``kind`` is already registered (registries never silently replace an entry).
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"engine kind must be a non-empty string, got {kind!r}")
    if kind in _REGISTRY:
        raise ValueError(f"engine kind {kind!r} is already registered; registered kinds: {engine_kinds()}")
    if isinstance(factory, str) and ":" not in factory:
        raise ValueError(f"an engine import path must look like 'package.module:Name', got {factory!r}")
    if not isinstance(factory, str) and not callable(factory):
        raise TypeError(f"engine factory for {kind!r} must be callable or an import path, got {factory!r}")
    _REGISTRY[kind] = factory


def engine_kinds() -> list[str]:
    """The registered engine kinds, sorted."""
    return sorted(_REGISTRY)


def make_engine(kind: str, **kwargs: Any) -> Engine:
    """Build the engine registered as ``kind`` with ``kwargs`` (e.g. ``make_engine("hf", model=path)``).

    Raises:
        ValueError: unknown ``kind`` (the message lists the registered ones).
    """
    if kind not in _REGISTRY:
        raise ValueError(f"unknown engine kind {kind!r}; registered kinds: {engine_kinds()}")
    factory = _REGISTRY[kind]
    if isinstance(factory, str):
        module_name, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    return factory(**kwargs)
