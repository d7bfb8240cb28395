"""Answer verifiers: a response and a gold answer in, a ``Verification`` out.

Built-in kinds: ``math`` (Math-Verify equivalence, run in worker processes under a hard timeout), ``numeric``
(tolerance, units by pint), ``choice`` (option letter or text), ``exact`` (normalised string equality),
``regex`` (a task-declared pattern), ``world_state`` (the episode's world), ``bfcl_ast`` (BFCL's AST match of
function calls) and ``bfcl_multi_turn`` (BFCL's multi-turn check, :mod:`amrsd_envs.bfcl_multi_turn`). Later kinds join with ``register_verifier``.

>>> check("numeric", "3200 m", "The distance is \\\\boxed{3.2 \\\\text{km}}").correct
True

Importing this package starts no process and imports neither sympy nor pint; the math worker pool starts on the
first comparison that needs it.
"""

from __future__ import annotations

from amrsd_envs.verifiers.base import (
    VERIFIERS,
    UnknownVerifierError,
    Verification,
    Verifier,
    VerifierOptions,
    VerifierRegistry,
    check,
    parse_options,
    register_verifier,
)
from amrsd_envs.verifiers.choice import ChoiceOptions, ChoiceVerifier
from amrsd_envs.verifiers.exact import ExactOptions, ExactVerifier
from amrsd_envs.verifiers.extract import extract_answer
from amrsd_envs.verifiers.math_pool import configure_pool, shutdown_pool
from amrsd_envs.verifiers.math_verifier import MathOptions, MathVerifier
from amrsd_envs.verifiers.numeric import NumericOptions, NumericVerifier
from amrsd_envs.verifiers.regex import RegexOptions, RegexVerifier

for _verifier in (MathVerifier(), NumericVerifier(), ChoiceVerifier(), ExactVerifier(), RegexVerifier()):
    if _verifier.name not in VERIFIERS:  # a re-import (importlib.reload) must not trip the duplicate check
        register_verifier(_verifier)

__all__ = [
    "VERIFIERS",
    "ChoiceOptions",
    "ExactOptions",
    "MathOptions",
    "NumericOptions",
    "RegexOptions",
    "UnknownVerifierError",
    "Verification",
    "Verifier",
    "VerifierOptions",
    "VerifierRegistry",
    "check",
    "configure_pool",
    "extract_answer",
    "parse_options",
    "register_verifier",
    "shutdown_pool",
]

from amrsd_envs.verifiers.world_state import WorldStateVerifier  # noqa: E402  (the world_state kind)

if WorldStateVerifier.name not in VERIFIERS:  # reload-safe, as above
    register_verifier(WorldStateVerifier())

from amrsd_envs.verifiers.bfcl_ast import BfclAstVerifier  # noqa: E402  (the bfcl_ast kind)

if BfclAstVerifier.name not in VERIFIERS:  # reload-safe, as above
    register_verifier(BfclAstVerifier())

from amrsd_envs.verifiers.bfcl_multi_turn import BfclMultiTurnVerifier  # noqa: E402  (the bfcl_multi_turn kind)

if BfclMultiTurnVerifier.name not in VERIFIERS:  # reload-safe, as above
    register_verifier(BfclMultiTurnVerifier())
