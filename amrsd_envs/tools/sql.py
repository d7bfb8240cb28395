"""The ``sql`` tool: one SQLite statement against the episode's database, and world creation.

Each episode of a family with a database gets its own file, made by :func:`create_sqlite_world` from
the family's schema and seed rows; the model reads and changes it through this tool and the
verifier inspects the file afterwards. Guards: an authorizer refuses ATTACH/DETACH (which also
covers ``VACUUM INTO``), transactions and savepoints (every statement commits at once, so the
verifier sees what the model did), virtual tables, every PRAGMA except a few read-only schema
queries, and extension loading; a progress handler interrupts a statement that runs longer than
``ctx.sql_timeout_s``; SQLite's length limits bound the size of any one value.

SQLite runs in this process and checks the progress handler only *between* its VM instructions, so one
instruction, a single function call, must stay short by itself: values are bounded at :data:`MAX_VALUE_BYTES`
(100 kB), LIKE/GLOB patterns at :data:`MAX_LIKE_PATTERN_CHARS`, and ``printf``/``format`` refuse a width or
precision above :data:`MAX_VALUE_BYTES` (``printf('%.*c', 2000000000, 'x')`` loops two billion times inside one
call, however short its result). The handler runs every :data:`PROGRESS_EVERY_OPS` instructions, so a statement
of many such calls is still interrupted soon after its deadline.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from amrsd_envs.tools.base import ToolError, tool
from amrsd_envs.tools.context import ToolContext

__all__ = ["SqlArgs", "create_sqlite_world", "run_sql"]

READ_ONLY_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})
_DENIED_ACTIONS = {
    sqlite3.SQLITE_ATTACH: "ATTACH (and VACUUM INTO) is not allowed: only the episode's database is reachable",
    sqlite3.SQLITE_DETACH: "DETACH is not allowed",
    sqlite3.SQLITE_TRANSACTION: "transactions are not allowed: every statement is committed on its own",
    sqlite3.SQLITE_SAVEPOINT: "savepoints are not allowed: every statement is committed on its own",
    sqlite3.SQLITE_CREATE_VTABLE: "virtual tables are not allowed",
    sqlite3.SQLITE_DROP_VTABLE: "virtual tables are not allowed",
}
MAX_VALUE_BYTES = 20_000
MAX_LIKE_PATTERN_CHARS = 100
MAX_CELL_CHARS = 80
PROGRESS_EVERY_OPS = 10
# A printf conversion: %, flags, width (digits or *), precision (. then digits or *), type (SQLite's printf.c).
_PRINTF_CONVERSION = re.compile(r"%([-+ 0#,!]*)(\*|\d+)?(?:\.(\*|\d+)?)?(l{0,2})(.?)", re.DOTALL)
_SMALL_INT_TEXT = re.compile(r"\s*[-+]?\d{1,7}\s*")
_PRINTF_HELPER_LOCK = threading.Lock()
_printf_helper: sqlite3.Connection | None = None
_PRINTF_REFUSAL = threading.local()


class SqlArgs(BaseModel):
    """Arguments of the sql tool."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(
        description=(
            "Exactly one SQLite statement (SELECT, INSERT, UPDATE, DELETE, CREATE ...). Each "
            "statement is committed immediately; list tables with "
            "\"SELECT name, sql FROM sqlite_master WHERE type='table'\"."
        ),
        min_length=1,
        max_length=20_000,
    )


@dataclass
class _Guard:
    """Per-statement authorizer and progress handler; remembers why it refused, for the message."""

    deadline: float
    refusal: str | None = field(default=None)
    timed_out: bool = field(default=False)

    def authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
        reason = _DENIED_ACTIONS.get(action)
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in READ_ONLY_PRAGMAS:
            reason = f"PRAGMA {arg1} is not allowed (read-only schema pragmas: {', '.join(sorted(READ_ONLY_PRAGMAS))})"
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in DENIED_FUNCTIONS:
            reason = f"the function {arg2}() is not allowed"
        if reason is None:
            return sqlite3.SQLITE_OK
        self.refusal = self.refusal or reason
        return sqlite3.SQLITE_DENY

    def progress(self) -> int:
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return 1  # non-zero interrupts the statement
        return 0


def _printf_problem(args: tuple[Any, ...]) -> str | None:
    """Why SQLite's printf must not run with ``args`` (a width or precision too large), or None."""
    if not args or not isinstance(args[0], str):
        return None  # SQLite returns NULL (no format) or prints the format's text form: no conversions to check
    next_arg = 1
    for match in _PRINTF_CONVERSION.finditer(args[0]):
        _, width, precision, _, kind = match.groups()
        if kind == "%" and width is None and precision is None:
            continue
        for part in (width, precision):
            if part is None:
                continue
            if part == "*":
                value = args[next_arg] if next_arg < len(args) else 0
                next_arg += 1
            else:
                value = part
            if not _small_number(value):
                return (
                    f"printf/format width and precision must be at most {MAX_VALUE_BYTES} "
                    "(longer results are not allowed anyway)"
                )
        next_arg += 1
    return None


def _checked_printf(*args: Any) -> Any:
    """SQLite's ``printf``/``format``, after refusing a width or precision over :data:`MAX_VALUE_BYTES`.

    Registered on the connection in place of the built-in (Python cannot unregister a function again, and the
    check is harmless for anyone else using the connection); the refusal reaches ``run_sql`` through a thread-local.
    """
    problem = _printf_problem(args)
    if problem is not None:
        _PRINTF_REFUSAL.reason = problem
        raise ValueError(problem)
    return _builtin_printf(args)


def _small_number(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (int, float)):
        return abs(value) <= MAX_VALUE_BYTES
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return bool(_SMALL_INT_TEXT.fullmatch(value)) and abs(int(value)) <= MAX_VALUE_BYTES


def _builtin_printf(args: tuple[Any, ...]) -> Any:
    """SQLite's own printf on checked arguments, from a private in-memory connection (ours shadows it)."""
    global _printf_helper
    with _PRINTF_HELPER_LOCK:
        if _printf_helper is None:
            _printf_helper = sqlite3.connect(":memory:", check_same_thread=False)
            _printf_helper.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        placeholders = ", ".join("?" for _ in args)
        return _printf_helper.execute(f"SELECT printf({placeholders})", args).fetchone()[0]


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    else:
        text = str(value).replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 3] + "..."


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], more: bool, max_rows: int) -> str:
    lines = [" | ".join(columns), " | ".join("-" * max(3, len(c)) for c in columns)]
    lines += [" | ".join(_cell(v) for v in row) for row in rows]
    if more:
        lines.append(f"... more than {max_rows} rows; only the first {max_rows} are shown (use LIMIT/WHERE)")
    else:
        lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def run_sql(conn: sqlite3.Connection, query: str, *, timeout_s: float, max_rows: int) -> str:
    """Run one statement under the guards and describe its result as text (ToolError on failure)."""
    guard = _Guard(deadline=time.monotonic() + timeout_s)
    conn.set_authorizer(guard.authorize)
    conn.set_progress_handler(guard.progress, PROGRESS_EVERY_OPS)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, MAX_LIKE_PATTERN_CHARS)
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    for name in ("printf", "format"):
        conn.create_function(name, -1, _checked_printf)
    _PRINTF_REFUSAL.reason = None
    cursor = conn.cursor()
    try:
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:
            raise ToolError(
                "the statement is not valid Unicode text (it has a lone surrogate such as \\ud800)"
            ) from None
        cursor.execute(query)
        if cursor.description is None:
            count = cursor.rowcount
            return f"OK, {count} row{'s' if count != 1 else ''} affected" if count >= 0 else "OK"
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchmany(max_rows + 1)
        return _table(columns, rows[:max_rows], len(rows) > max_rows, max_rows)
    except (sqlite3.Error, sqlite3.Warning) as exc:
        refusal = guard.refusal or _PRINTF_REFUSAL.reason
        if refusal:
            raise ToolError(f"refused: {refusal}") from None
        if guard.timed_out:
            raise ToolError(f"the statement was interrupted after {timeout_s:g} s; simplify it or add LIMIT") from None
        message = str(exc)
        if "one statement at a time" in message:
            message = "send exactly one SQL statement per call"
        raise ToolError(f"SQL error: {message}") from None
    finally:
        cursor.close()
        conn.set_authorizer(None)
        conn.set_progress_handler(None, 0)


def create_sqlite_world(schema_sql: str, seed_sql: str | Sequence[str], path: str | Path) -> Path:
    """Create a fresh SQLite database file at ``path`` from a schema script and seed statements.

    ``seed_sql`` is one script or a list of scripts run in order. An existing file at ``path`` is
    replaced, so each episode starts from the same state. Raises ``ValueError`` naming the part
    that failed (the schema, or seed item N) with SQLite's message.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    seeds = [seed_sql] if isinstance(seed_sql, str) else list(seed_sql)
    conn = sqlite3.connect(target)
    try:
        # a fresh per-episode file: no durability needed, and synced autocommit writes were most of its start-up
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA journal_mode = MEMORY")
        parts = [("schema", schema_sql)] + [(f"seed item {i}", s) for i, s in enumerate(seeds)]
        for label, script in parts:
            if not isinstance(script, str):
                raise TypeError(f"{label} of the SQLite world must be SQL text, got {type(script).__name__}")
            try:
                conn.executescript(script)
            except sqlite3.Error as exc:
                raise ValueError(f"creating SQLite world {target}: {label} failed: {exc}") from None
        conn.commit()
    finally:
        conn.close()
    return target


@tool(
    name="sql",
    description=(
        "Run one SQLite statement on this task's database and see the rows (as a table) or the "
        "number of rows changed. Changes are saved immediately."
    ),
    args=SqlArgs,
)
def sql(args: SqlArgs, ctx: ToolContext) -> str:
    """Run ``args.query`` on the episode's database."""
    try:
        conn = ctx.get_sql_connection()
    except LookupError as exc:
        raise ToolError(f"{exc}; the sql tool cannot be used in this task") from None
    return run_sql(conn, args.query, timeout_s=ctx.sql_timeout_s, max_rows=ctx.sql_max_rows)
