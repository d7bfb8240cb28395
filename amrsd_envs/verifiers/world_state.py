"""``world_state``: the final state of the episode's world matches the gold (and, optionally, so does the answer).

Tool-use tasks that ask the agent to *change* something (update a database, place an order) are graded on what the
agent left behind, not on what it says. The env injects the episode's :class:`~amrsd_envs.tools.ToolWorld` as the
``world`` option at verification time; the task's options say what to look at:

``sql``      a query run **read-only** on the episode's final SQLite database. The gold is the JSON list of the
             expected rows (each row a JSON list, in the query's column order), e.g. ``[[1, "shipped"], [2,
             "pending"]]``.
``service``  a dotted path into the snapshot of the episode's HTTP service (``service.state()``, converted to JSON
             types), e.g. ``orders`` or ``items.SKU-123.stock``. The gold is the expected JSON value there.
``also_answer``  also require the final text answer to match, with that verifier kind (``answer_options`` are its
             options).

Gold format. With exactly one thing to check (``sql`` or ``service``, no ``also_answer``) the gold is that thing's
expected JSON value. Otherwise it is a JSON object with one key per check: ``{"sql": [...], "service": ...,
"answer": "<gold text answer>"}``.

Canonical comparison (both sides as JSON types):

- numbers (ints, floats; booleans count as 0/1) are equal when ``|observed - expected| <= atol + rtol * |expected|``,
  so ``13.200000000000001`` written by ``price * 1.1`` equals a gold ``13.2``; strings and nulls compare exactly;
- lists compare element-wise in order, except SQL rows when the query has no ``ORDER BY`` (SQLite promises no
  order then): rows are matched as a multiset. ``ordered`` overrides the choice for both kinds;
- objects (service state) compare on the keys the *gold* names; keys the gold omits (an order's generated
  ``order_id``) are not checked, so a gold says exactly what matters.

Feedback names what differed (more or fewer rows, a column or field name) but never a value from the gold.
``extracted`` is a short JSON summary of the observed state, for the peer buffer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from amrsd_envs.verifiers.base import (
    BuiltinVerifier,
    Verification,
    VerifierOptions,
    check,
    parse_options,
)

NO_WORLD_FEEDBACK = "no world state to check"
SUMMARY_CHARS = 240
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
_READ_QUERY = re.compile(r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(select|with|values)\b", re.IGNORECASE | re.DOTALL)
_PROGRESS_EVERY_OPS = 1_000


class WorldStateOptions(VerifierOptions):
    """Options of the ``world_state`` verifier."""

    sql: str | None = Field(
        None,
        description="A read-only query (SELECT/WITH/VALUES) run on the episode's final SQLite database; its rows are "
        "compared with the gold rows. Without ORDER BY the rows are compared as a multiset.",
    )
    service: str | None = Field(
        None,
        description="Dotted path into the episode's HTTP service state snapshot (e.g. `orders`, "
        "`items.SKU-123.stock`; list elements by index, `orders.0.qty`); the value there is compared with the gold.",
    )
    ordered: bool | None = Field(
        None,
        description="Compare lists in order (True) or as multisets (False). Default: SQL rows are ordered only when "
        "the query has ORDER BY; lists in the service state are ordered.",
    )
    rtol: float = Field(1e-6, ge=0, description="Relative tolerance for numbers: |obs - exp| <= atol + rtol*|exp|.")
    atol: float = Field(1e-9, ge=0, description="Absolute tolerance for numbers.")
    also_answer: Literal["math", "numeric", "exact"] | None = Field(
        None,
        description="Also require the final text answer to match the gold's `answer`, with this verifier kind.",
    )
    answer_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the `also_answer` verifier (e.g. {rtol: 0.01, units: g})."
    )
    max_rows: int = Field(1000, ge=1, description="The check query may return at most this many rows.")
    timeout_s: float = Field(5.0, gt=0, le=60, description="The check query is interrupted after this many seconds.")
    world: SkipJsonSchema[Any] = Field(
        None,
        exclude=True,
        description="Injected by the env at verification time (the episode's ToolWorld); never set in a task file.",
    )

    @field_validator("sql")
    @classmethod
    def _read_query(cls, v: str | None) -> str | None:
        if v is not None and not _READ_QUERY.match(v):
            raise ValueError("sql must be one read-only query starting with SELECT, WITH or VALUES")
        return v

    @field_validator("service")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and any(part == "" for part in v.split(".")):
            raise ValueError(f"service path {v!r} has an empty segment; write e.g. `orders` or `items.SKU-1.stock`")
        return v

    @field_validator("world")
    @classmethod
    def _world(cls, v: Any) -> Any:
        if v is not None and not (hasattr(v, "sqlite_path") and hasattr(v, "service_state")):
            raise ValueError(
                "`world` is injected by the env (a ToolWorld with sqlite_path and service_state()); "
                "do not set it in a task file"
            )
        return v

    @model_validator(mode="after")
    def _checks(self) -> "WorldStateOptions":
        if self.sql is None and self.service is None:
            raise ValueError(
                "world_state needs `sql` and/or `service` (what to check); for a text-only check use the "
                "`also_answer` kind as the verifier type instead"
            )
        if self.also_answer is None and self.answer_options:
            raise ValueError("answer_options is set but also_answer is not; set also_answer: math|numeric|exact")
        if self.also_answer is not None:
            parse_options(self.also_answer, self.answer_options)  # raises ValueError naming the bad option
        return self

    def checks(self) -> list[str]:
        """The gold keys this configuration needs, in a fixed order."""
        keys = [k for k in ("sql", "service") if getattr(self, k) is not None]
        return keys + (["answer"] if self.also_answer is not None else [])


@dataclasses.dataclass(frozen=True)
class StateCheck:
    """The outcome of one state check: what was observed (JSON types), the first difference (None when equal) and,
    for SQL, the observed rows that match no gold row (what the summary shows first)."""

    observed: Any
    difference: str | None
    unmatched: list[Any] | None = None

    def summary(self) -> str:
        if self.unmatched:
            return f"{len(self.unmatched)} unexpected row(s) {_json(self.unmatched)}"
        return _json(self.observed)


class WorldStateVerifier(BuiltinVerifier):
    """The episode's final world (SQLite rows, service state) equals the gold; optionally the answer too."""

    name: ClassVar[str] = "world_state"
    options_model: ClassVar[type[VerifierOptions]] = WorldStateOptions

    def check(self, gold: str, response: str, options: WorldStateOptions) -> Verification:  # type: ignore[override]
        expected = parse_gold(gold, options)
        world = options.world
        if world is None:
            return Verification.wrong(None, NO_WORLD_FEEDBACK)
        problems: list[str] = []
        summary: list[str] = []
        if options.sql is not None:
            result = check_sql(world, options.sql, expected["sql"], options)
            summary.append(f"sql: {result.summary()}")
            if result.difference:
                problems.append(f"database: {result.difference}")
        if options.service is not None:
            result = check_service(world, options.service, expected["service"], options)
            summary.append(f"{options.service}: {result.summary()}")
            if result.difference:
                problems.append(f"service state: {result.difference}")
        if options.also_answer is not None:
            verdict = check(options.also_answer, expected["answer"], response, **options.answer_options)
            summary.append(f"answer: {verdict.extracted}")
            if not verdict.correct:
                problems.append(f"final answer: {verdict.feedback}")
        extracted = _cut("; ".join(summary))
        if problems:
            return Verification.wrong(extracted, "; ".join(problems))
        return Verification.right(extracted)


# ----------------------------------------------------------------------------------------------------------------
# gold


def parse_gold(gold: str, options: WorldStateOptions) -> dict[str, Any]:
    """The expected value of each configured check, by key (``sql``, ``service``, ``answer``).

    Raises ValueError (a task-spec error) when the gold is not JSON or does not fit the options."""
    try:
        value = json.loads(gold)
    except json.JSONDecodeError as exc:
        raise ValueError(f"world_state: the gold must be JSON ({exc.msg} at position {exc.pos})") from None
    keys = options.checks()
    if len(keys) == 1:
        out = {keys[0]: value}
    else:
        if not isinstance(value, dict):
            raise ValueError(
                f"world_state: with several checks ({', '.join(keys)}) the gold must be a JSON object with those keys"
            )
        missing, extra = sorted(set(keys) - set(value)), sorted(set(value) - set(keys))
        if missing or extra:
            raise ValueError(
                f"world_state: gold keys must be exactly {keys}; "
                f"missing {missing or 'none'}, unexpected {extra or 'none'}"
            )
        out = dict(value)
    if "sql" in out:
        rows = out["sql"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ValueError("world_state: the sql gold must be a JSON list of rows, each a list of column values")
    if "answer" in out and not isinstance(out["answer"], str):
        raise ValueError("world_state: the gold `answer` must be a string")
    return out


# ----------------------------------------------------------------------------------------------------------------
# state checks


def check_sql(world: Any, query: str, expected: list[list[Any]], options: WorldStateOptions) -> StateCheck:
    """Run ``query`` read-only on the world's database and compare its rows with ``expected``."""
    path = getattr(world, "sqlite_path", None)
    if path is None:
        raise ValueError("world_state: `sql` is set but this task's world has no SQLite database (add world.sqlite)")
    path = Path(path)
    if not path.is_file():
        return StateCheck(None, "the database file is gone")
    rows = _read_rows(path, query, options)
    if isinstance(rows, str):
        return StateCheck(None, rows)
    columns, observed = rows
    ordered = options.ordered if options.ordered is not None else bool(_ORDER_BY.search(query))
    if len(observed) > len(expected):
        return StateCheck(observed, "the check query returns more rows than expected")
    if len(observed) < len(expected):
        return StateCheck(observed, "the check query returns fewer rows than expected")
    if ordered:
        diffs = [(_row_difference(e, o, columns, options), o) for e, o in zip(expected, observed)]
        wrong = [row for diff, row in diffs if diff]
        first = next((diff for diff, _ in diffs if diff), None)
        return StateCheck(observed, first, wrong)
    unmatched = list(observed)
    first = None
    for exp_row in expected:
        hit = next(
            (k for k, row in enumerate(unmatched) if _row_difference(exp_row, row, columns, options) is None), None
        )
        if hit is None:
            first = first or _unordered_miss(exp_row, unmatched, columns, options)
        else:
            unmatched.pop(hit)
    return StateCheck(observed, first, unmatched if first else [])


def _read_rows(path: Path, query: str, options: WorldStateOptions) -> tuple[list[str], list[list[Any]]] | str:
    """Column names and rows of ``query`` (opened read-only, interrupted after ``timeout_s``), or an error text."""
    deadline = time.monotonic() + options.timeout_s
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return f"the database cannot be opened ({exc})"
    try:
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_EVERY_OPS)
        cursor = conn.execute(query)
        columns = [d[0] for d in cursor.description or ()]
        rows = cursor.fetchmany(options.max_rows + 1)
    except sqlite3.Error as exc:
        # The agent may have dropped or altered a table: that is a wrong final state, not a task error.
        return f"the check query failed on the final database ({exc})"
    finally:
        conn.close()
    if len(rows) > options.max_rows:
        return "the check query returns more rows than the verifier reads (max_rows)"
    return columns, [[_sql_value(v) for v in row] for row in rows]


def _sql_value(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def _row_difference(
    expected: list[Any], observed: list[Any], columns: list[str], options: WorldStateOptions
) -> str | None:
    if len(expected) != len(observed):
        return "the check query returns a different number of columns than the gold rows have"
    for k, (e, o) in enumerate(zip(expected, observed)):
        if not values_equal(e, o, options.rtol, options.atol):
            name = columns[k] if k < len(columns) else "?"
            return f"a row differs in column {name!r}"
    return None


def _unordered_miss(
    expected: list[Any], candidates: list[list[Any]], columns: list[str], options: WorldStateOptions
) -> str:
    """Feedback for an expected row with no equal observed row: name the columns of the closest candidate that
    differ (closest = most equal columns), so the agent learns *what* is wrong without the value."""
    best: list[str] | None = None
    for row in candidates:
        if len(row) != len(expected):
            return "the check query returns a different number of columns than the gold rows have"
        differing = [
            columns[k] if k < len(columns) else "?"
            for k, (e, o) in enumerate(zip(expected, row))
            if not values_equal(e, o, options.rtol, options.atol)
        ]
        if best is None or len(differing) < len(best):
            best = differing
    names = ", ".join(repr(c) for c in (best or []))
    return f"an expected row is missing (the closest row differs in {names})" if names else "an expected row is missing"


def check_service(world: Any, path: str, expected: Any, options: WorldStateOptions) -> StateCheck:
    """Compare the value at ``path`` of the world's service snapshot with ``expected``."""
    if getattr(world, "service", None) is None:
        raise ValueError("world_state: `service` is set but this task's world has no HTTP service (add world.http)")
    state = to_json(world.service_state())
    node: Any = state
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return StateCheck(None, f"the service state has nothing at {path!r}")
    ordered = True if options.ordered is None else options.ordered
    return StateCheck(node, json_difference(expected, node, path, ordered, options.rtol, options.atol))


# ----------------------------------------------------------------------------------------------------------------
# canonical comparison


def to_json(value: Any) -> Any:
    """``value`` as JSON types: dataclasses and pydantic models become dicts, tuples become lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, BaseModel):
        return to_json(value.model_dump())
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))  # bool is an int: True == 1, as SQLite stores it


def values_equal(expected: Any, observed: Any, rtol: float, atol: float) -> bool:
    """Scalar (or nested) equality under the canonical rules: numbers within tolerance, the rest exactly."""
    return json_difference(expected, observed, "", True, rtol, atol) is None


def json_difference(expected: Any, observed: Any, where: str, ordered: bool, rtol: float, atol: float) -> str | None:
    """The first difference between ``expected`` and ``observed`` as words (no expected values), or None.

    Objects compare on the expected keys only; lists in order when ``ordered``, else as multisets."""
    label = f"{where!r}" if where else "the value"
    if _is_number(expected) and _is_number(observed):
        e, o = float(expected), float(observed)
        if math.isfinite(e) and math.isfinite(o) and abs(o - e) <= atol + rtol * abs(e):
            return None
        return None if e == o else f"{label} has a different value"
    if isinstance(expected, dict):
        if not isinstance(observed, dict):
            return f"{label} is not an object"
        for key, e in expected.items():
            if key not in observed:
                return f"{label} has no field {key!r}"
            diff = json_difference(e, observed[key], key, ordered, rtol, atol)
            if diff:
                return diff
        return None
    if isinstance(expected, list):
        if not isinstance(observed, list):
            return f"{label} is not a list"
        if len(observed) != len(expected):
            more = "more" if len(observed) > len(expected) else "fewer"
            return f"{label} has {more} entries than expected"
        if ordered:
            for e, o in zip(expected, observed):
                diff = json_difference(e, o, where, ordered, rtol, atol)
                if diff:
                    return diff
            return None
        pool = list(observed)
        for e in expected:
            hit = next((k for k, o in enumerate(pool) if json_difference(e, o, where, False, rtol, atol) is None), None)
            if hit is None:
                return f"an expected entry of {label} is missing"
            pool.pop(hit)
        return None
    if type(expected) is not type(observed) and not (expected is None or observed is None):
        return f"{label} has a different type"
    return None if expected == observed else f"{label} has a different value"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _cut(text: str) -> str:
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 4] + " ..."
