"""``bfcl_multi_turn``: every user turn of a BFCL multi-turn episode passed BFCL's check.

The world, the check and the oracle live in :mod:`amrsd_envs.bfcl_multi_turn`; this kind hands the env a new world
at reset (``episode_world``), reads the world's per-turn verdicts when the episode ends (``check``, the world
injected as the ``world`` option) and scripts the oracle (``oracle_messages``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from amrsd_envs.bfcl_multi_turn import MultiTurnWorld, oracle_messages, parse_gold
from amrsd_envs.verifiers.base import BuiltinVerifier, Verification, VerifierOptions


class BfclMultiTurnOptions(VerifierOptions):
    """Options of ``bfcl_multi_turn``: none in a task file; the env injects the episode's world."""

    world: SkipJsonSchema[Any] = Field(
        None, exclude=True,
        description="Injected by the env at verification time (the episode's MultiTurnWorld); never set in a file.",
    )


class BfclMultiTurnVerifier(BuiltinVerifier):
    """Every user turn of the episode passed BFCL's multi-turn check (:mod:`amrsd_envs.bfcl_multi_turn`)."""

    name: ClassVar[str] = "bfcl_multi_turn"
    options_model: ClassVar[type[VerifierOptions]] = BfclMultiTurnOptions

    def check(self, gold: str, response: str, options: BfclMultiTurnOptions) -> Verification:
        data = parse_gold(gold)
        world = options.world
        if not isinstance(world, MultiTurnWorld):
            return Verification.wrong(None, "no episode world to check (bfcl_multi_turn runs inside the env)")
        passed = sum(v.passed for v in world.verdicts)
        extracted = f"{passed}/{len(data['turns'])} user turns passed"
        if len(world.verdicts) < len(data["turns"]):
            return Verification.wrong(extracted, "the episode ended before the last user turn")
        failed = [v for v in world.verdicts if not v.passed]
        if failed:
            return Verification.wrong(extracted, failed[0].feedback)
        return Verification.right(extracted)

    def episode_world(self, gold: str) -> MultiTurnWorld:
        """The world of a new episode of this task (the env calls it at reset)."""
        return MultiTurnWorld(parse_gold(gold))

    def oracle_messages(self, gold: str) -> list[str]:
        """Per user turn: the ground-truth calls in one message, then a reply without calls."""
        return oracle_messages(gold)
