"""The ``lookup`` tool: read a record from the knowledge tables shipped in ``tasks/data``.

Tables (``<data_dir>/<table>.json``, each ``{"_source": ..., "<table>": [record, ...]}``):

- ``elements``: the 118 elements; key = symbol, name, alias or atomic number.
- ``constants``: CODATA 2018 constants with units; key = symbol, name or alias.
- ``facts``: planets, Moon, Sun and common substances; key = name or alias.

Keys are case-insensitive, except that a key matching one record's symbol exactly wins over a
case-insensitive match (``G`` is the gravitational constant, ``g`` standard gravity).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from amrsd_envs.tools.base import ToolError, tool
from amrsd_envs.tools.context import ToolContext

__all__ = ["TABLE_NAMES", "LookupArgs", "LookupTable", "find_record", "load_table"]

TABLE_NAMES = ("elements", "constants", "facts")
TableName = Literal["elements", "constants", "facts"]


class LookupArgs(BaseModel):
    """Arguments of the lookup tool."""

    model_config = ConfigDict(extra="forbid")

    table: TableName = Field(
        description=(
            "Which table: 'elements' (periodic table: symbol, name, atomic_number, atomic_weight), "
            "'constants' (physical constants: value, unit, uncertainty) or 'facts' (planets, Moon, "
            "Sun, common substances: mass, radius, orbital period, density, specific heat, ...)."
        )
    )
    key: str = Field(
        description="Record to read, case-insensitive: an element symbol/name/number, a constant's "
        "symbol or name (e.g. 'G', 'speed of light'), or a fact's name (e.g. 'Mars', 'water').",
        min_length=1,
        max_length=200,
    )
    field: str | None = Field(
        default=None,
        description="Optional single field to return (e.g. 'atomic_weight', 'value', 'mass_kg'); "
        "omit it to get the whole record.",
    )


@dataclass(frozen=True)
class LookupTable:
    """One loaded table: its records and the exact-case and folded-case key indexes."""

    name: str
    source: Any
    records: tuple[dict[str, Any], ...]
    exact_symbols: dict[str, int]
    folded_keys: dict[str, tuple[int, ...]]

    def all_keys(self) -> list[str]:
        """Every name a record can be looked up by (for suggestions)."""
        return sorted({str(k) for k in self.exact_symbols} | {_display_key(r) for r in self.records})


def _display_key(record: dict[str, Any]) -> str:
    return str(record.get("symbol") or record["name"])


def _record_keys(record: dict[str, Any]) -> list[str]:
    keys = [record["name"], *record.get("aliases", [])]
    if "symbol" in record:
        keys.append(record["symbol"])
    if "atomic_number" in record:
        keys.append(str(record["atomic_number"]))
    return [str(k) for k in keys]


_CACHE: dict[tuple[Path, int], LookupTable] = {}


def load_table(data_dir: Path, name: str) -> LookupTable:
    """Load and index ``<data_dir>/<name>.json`` (cached until the file changes).

    Raises ``ValueError`` for an unknown table name and :class:`ToolError` for a missing or malformed
    file (a broken installation, reported to the model rather than crashing the episode).
    """
    if name not in TABLE_NAMES:
        raise ValueError(f"unknown lookup table {name!r}; tables are {', '.join(TABLE_NAMES)}")
    path = Path(data_dir) / f"{name}.json"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        raise ToolError(f"lookup table file {path} is missing") from None
    cached = _CACHE.get((path, stamp))
    if cached is not None:
        return cached
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        records = document[name]
        if not isinstance(records, list) or not all(isinstance(r, dict) and "name" in r for r in records):
            raise ValueError(f"'{name}' must be a list of objects that each have a 'name'")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ToolError(f"lookup table file {path} is malformed: {exc}") from None
    exact: dict[str, int] = {}
    folded: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        if "symbol" in record:
            exact[str(record["symbol"])] = index
        for key in _record_keys(record):
            bucket = folded.setdefault(key.casefold(), [])
            if index not in bucket:
                bucket.append(index)
    table = LookupTable(
        name=name,
        source=document.get("_source"),
        records=tuple(records),
        exact_symbols=exact,
        folded_keys={k: tuple(v) for k, v in folded.items()},
    )
    _CACHE[(path, stamp)] = table
    return table


def find_record(table: LookupTable, key: str) -> dict[str, Any]:
    """The record ``key`` names; :class:`ToolError` with close matches if none, or if ambiguous."""
    wanted = key.strip()
    if wanted in table.exact_symbols:
        return table.records[table.exact_symbols[wanted]]
    matches = table.folded_keys.get(wanted.casefold(), ())
    if len(matches) == 1:
        return table.records[matches[0]]
    if len(matches) > 1:
        options = ", ".join(f"{_display_key(table.records[i])!r} ({table.records[i]['name']})" for i in matches)
        raise ToolError(f"{key!r} is ambiguous in table {table.name!r}: it could be {options}; use the exact symbol")
    close = difflib.get_close_matches(wanted.casefold(), list(table.folded_keys), n=4, cutoff=0.6)
    names = []
    for folded in close:
        for index in table.folded_keys[folded]:
            label = table.records[index]["name"]
            if label not in names:
                names.append(label)
    hint = f"; close matches: {', '.join(names)}" if names else ""
    raise ToolError(f"no entry {key!r} in table {table.name!r}{hint}")


def lookup_text(data_dir: Path, table_name: str, key: str, field: str | None = None) -> str:
    """The JSON text the lookup tool returns for one query."""
    table = load_table(data_dir, table_name)
    record = find_record(table, key)
    if field is None:
        return json.dumps(record, ensure_ascii=False)
    if field not in record:
        fields = ", ".join(k for k in record if not k.startswith("_"))
        raise ToolError(f"entry {record['name']!r} has no field {field!r}; its fields are {fields}")
    result = {"name": record["name"], field: record[field]}
    if "unit" in record and field != "unit":
        result["unit"] = record["unit"]
    return json.dumps(result, ensure_ascii=False)


@tool(
    name="lookup",
    description=(
        "Look up reference data: chemical elements (atomic weights), physical constants (CODATA 2018, "
        "with units) and facts about planets and common substances. Returns a JSON record."
    ),
    args=LookupArgs,
)
def lookup(args: LookupArgs, ctx: ToolContext) -> str:
    """Read ``args.key`` (and optionally one ``args.field``) from ``args.table``."""
    return lookup_text(ctx.data_dir, args.table, args.key, args.field)
