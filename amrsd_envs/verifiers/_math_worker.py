"""The Math-Verify worker process: run as a script by ``math_pool``, never imported by the package.

It imports only the standard library and Math-Verify (not ``amrsd_envs``), so it starts fast and runs the same
whatever script the parent is. Protocol, over two inherited pipe fds wrapped in
``multiprocessing.connection.Connection`` (pickled messages):

- worker -> parent, once: ``("ready", pid)`` after Math-Verify is imported;
- parent -> worker: ``(gold, answer, float_rounding, numeric_precision, strict)``;
- worker -> parent: ``(status, detail, pick)`` with status one of ``equal``, ``not_equal``, ``gold_unparsed``,
  ``answer_unparsed``, ``error``; ``pick`` is the string Math-Verify's ``parse`` extracted from the answer (its
  ``first_match`` fallback string; ``""`` when it extracted nothing). The answer may be a ``$...$``-wrapped final
  answer or a whole model response: the worker does the same ``parse`` (default extraction configs) on both.

Math-Verify's own signal-based timeouts are off: the parent enforces the timeout by killing this process.
The worker exits when the request pipe closes (parent gone) and, on Linux, when the parent dies (PDEATHSIG).

Usage: ``python _math_worker.py <request_fd> <reply_fd> <memory_mb or 0> <parent_pid>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any


def _die_with_parent(parent_pid: int) -> None:
    # Linux only: SIGKILL this worker when the parent dies, even mid-computation on a pathological input (a thread
    # cannot help there: a big-int power holds the GIL). The signal follows the *thread* that started us, so the
    # pool starts workers from one long-lived thread.
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        sys.exit(0)


def _limit_memory(memory_mb: int) -> None:
    if memory_mb <= 0:
        return
    import resource

    limit = memory_mb * 1024 * 1024
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):  # a lower hard limit is already in place: keep it
        pass


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple[Any, ...]:
    from math_verify import parse

    return tuple(parse(gold, parsing_timeout=None))  # type: ignore[arg-type]


def _pick(parsed: list[Any]) -> str:
    """The string Math-Verify extracted (``parse`` appends it, as a str, after the parsed value)."""
    return parsed[-1] if parsed and isinstance(parsed[-1], str) else ""


def compare(
    gold: str, answer: str, float_rounding: int, numeric_precision: int, strict: bool
) -> tuple[str, str, str]:
    """Math-Verify ``verify(parse(gold), parse(answer))`` (gold first: the relation is not symmetric)."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return "gold_unparsed", f"Math-Verify extracted nothing from the gold {gold!r}", ""
    answer_parsed = parse(answer, parsing_timeout=None)  # type: ignore[arg-type]
    if not answer_parsed:
        return "answer_unparsed", "Math-Verify extracted nothing from the answer", ""
    ok = verify(
        list(gold_parsed),
        answer_parsed,
        float_rounding=float_rounding,
        numeric_precision=numeric_precision,
        strict=strict,
        timeout_seconds=None,  # type: ignore[arg-type]
    )
    return ("equal" if ok else "not_equal"), "", _pick(answer_parsed)


def main(argv: list[str]) -> int:
    requests = Connection(int(argv[0]), writable=False)
    replies = Connection(int(argv[1]), readable=False)
    _die_with_parent(int(argv[3]))
    _limit_memory(int(argv[2]))
    # Math-Verify warns that its timeouts are off (ours are enforced outside) and logs each parse failure.
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")  # sympy deprecation chatter on odd inputs would spam the parent's stderr
    import math_verify  # (loaded before "ready": the parent's timeout then covers only comparisons)

    # The first parse builds the LaTeX grammar and sympy's printers lazily (seconds on a busy machine), which would
    # otherwise count against the first comparison's timeout and score a right answer wrong.
    with contextlib.suppress(Exception):
        math_verify.verify(math_verify.parse("$\\frac{1}{2}$"), math_verify.parse("$x = 0.5$"))
    replies.send(("ready", os.getpid()))
    while True:
        try:
            req = requests.recv()
        except (EOFError, OSError):
            return 0
        try:
            status, detail, pick = compare(*req)
        except MemoryError:
            status, detail, pick = "error", "MemoryError (worker memory limit)", ""
        except Exception as exc:  # a sympy/Math-Verify bug on odd input must not end the worker
            status, detail, pick = "error", f"{type(exc).__name__}: {exc}"[:500], ""
        try:
            replies.send((status, detail, pick))
        except (EOFError, OSError):
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
