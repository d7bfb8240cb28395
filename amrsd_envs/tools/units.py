"""The ``convert_units`` tool: convert a quantity between units with pint."""

from __future__ import annotations

import difflib
import math
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from amrsd_envs.tools.base import ToolError, tool
from amrsd_envs.tools.context import ToolContext

__all__ = ["ConvertUnitsArgs", "convert"]

MAX_UNIT_CHARS = 100


class ConvertUnitsArgs(BaseModel):
    """Arguments of the convert_units tool."""

    model_config = ConfigDict(extra="forbid")

    value: float = Field(description="The number to convert, in from_unit.", allow_inf_nan=False)
    from_unit: str = Field(
        description="Unit of the value, e.g. 'km/h', 'degC', 'eV', 'lbf*ft', 'mol/L'.",
        min_length=1,
        max_length=MAX_UNIT_CHARS,
    )
    to_unit: str = Field(
        description="Unit to convert to; must have the same dimension as from_unit.",
        min_length=1,
        max_length=MAX_UNIT_CHARS,
    )


@cache
def _registry() -> Any:
    # Building pint's registry takes ~0.1 s and its import more: do it once, on first use.
    import pint

    return pint.UnitRegistry()


def _unknown_unit_message(names: tuple[str, ...] | list[str], registry: Any) -> str:
    candidates = [name for name in dir(registry) if not name.startswith("_")]
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, candidates, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        parts.append(f"unknown unit {name!r}{hint}")
    return "; ".join(parts)


def _format_value(value: float) -> str:
    return f"{value:.12g}"


def convert(value: float, from_unit: str, to_unit: str) -> str:
    """``'<value> <from_unit> = <converted> <to_unit>'``; :class:`ToolError` for bad units or dimensions."""
    import pint

    registry = _registry()
    try:
        quantity = registry.Quantity(value, from_unit)
        converted = quantity.to(to_unit)
    except pint.UndefinedUnitError as exc:
        raise ToolError(_unknown_unit_message(list(exc.unit_names), registry)) from None
    except pint.DimensionalityError as exc:
        raise ToolError(
            f"cannot convert {from_unit!r} ({exc.dim1}) to {to_unit!r} ({exc.dim2}): "
            "the dimensions differ"
        ) from None
    except pint.OffsetUnitCalculusError as exc:
        raise ToolError(
            f"ambiguous temperature units ({exc}); for temperature differences use delta_degC / delta_degF"
        ) from None
    except Exception as exc:  # pint's parser raises plain ValueError/TypeError/SyntaxError on odd text
        raise ToolError(f"cannot read the units {from_unit!r} -> {to_unit!r}: {exc}") from None
    magnitude = float(converted.magnitude)
    if not math.isfinite(magnitude):
        raise ToolError("the converted value overflows a float; check the units' exponents")
    return f"{_format_value(value)} {from_unit} = {_format_value(magnitude)} {to_unit}"


@tool(
    name="convert_units",
    description=(
        "Convert a value from one unit to another (SI, imperial, CGS, atomic, temperature...). "
        "Temperatures in degC/degF/K are absolute; use delta_degC for differences."
    ),
    args=ConvertUnitsArgs,
)
def convert_units(args: ConvertUnitsArgs, ctx: ToolContext) -> str:
    """Convert ``args.value`` from ``args.from_unit`` to ``args.to_unit``."""
    return convert(args.value, args.from_unit, args.to_unit)
