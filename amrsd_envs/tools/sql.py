"""The ``sql`` tool: one SQLite statement against the episode's database, and world creation.

Each episode of a family with a database gets its own file, made by :func:`create_sqlite_world` from
the family's schema and seed rows; the model reads and changes it through this tool and the
verifier inspects the file afterwards. Guards: an authorizer refuses ATTACH/DETACH (which also
covers ``VACUUM INTO``), transactions and savepoints (every statement commits at once, so the
verifier sees what the model did), virtual tables, every PRAGMA except a few read-only schema
queries, and extension loading; a progress handler interrupts a statement that runs longer than
``ctx.sql_timeout_s``; SQLite's length limits bound the size of any one value.
"""

from __future__ import annotations

import sqlite3
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
MAX_VALUE_BYTES = 1_000_000
MAX_CELL_CHARS = 80
PROGRESS_EVERY_OPS = 1_000


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
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    cursor = conn.cursor()
    try:
        cursor.execute(query)
        if cursor.description is None:
            count = cursor.rowcount
            return f"OK, {count} row{'s' if count != 1 else ''} affected" if count >= 0 else "OK"
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchmany(max_rows + 1)
        return _table(columns, rows[:max_rows], len(rows) > max_rows, max_rows)
    except (sqlite3.Error, sqlite3.Warning) as exc:
        if guard.refusal:
            raise ToolError(f"refused: {guard.refusal}") from None
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
