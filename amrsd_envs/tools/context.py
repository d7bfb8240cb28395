"""Per-episode resources the tools act on: sandbox, SQLite world, allowed hosts, data tables, caps."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ToolContext", "default_data_dir", "normalize_host"]


def default_data_dir() -> Path:
    """``data/`` of the built-in task suite (the package ``amrsd_tasks``; ``tasks/data`` of a checkout that is not
    installed): the lookup tables shipped with the built-in tasks."""
    from importlib.resources import files

    try:
        return Path(str(files("amrsd_tasks"))) / "data"
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "tasks" / "data"


def normalize_host(entry: str) -> str:
    """Canonical form of an allowed-host entry ``host`` or ``host:port`` (lowercase, IPv6 bracketed).

    Raises ``ValueError`` for an entry with a scheme, a path or a bad port, since such an entry
    would never match and silently block every request.
    """
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"allowed host entries are 'host' or 'host:port' strings, got {entry!r}")
    text = entry.strip().lower()
    if "/" in text or "@" in text:
        raise ValueError(
            f"allowed host {entry!r} must be 'host' or 'host:port' without scheme, user or path "
            "(e.g. '127.0.0.1:8080')"
        )
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            raise ValueError(f"allowed host {entry!r}: unclosed '[' in IPv6 address")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"allowed host {entry!r}: expected ':port' after the IPv6 address")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.count(":") > 1:
        host = f"[{text}]"  # a bare IPv6 address
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"allowed host {entry!r}: port must be an integer in 1..65535")
        return f"{host}:{int(port)}"
    return host


@dataclass
class ToolContext:
    """Everything one episode's tool calls may touch; created by the env, closed at episode end.

    Use as a context manager (or call :meth:`close`) so the sandbox and the SQLite connection are
    released. The python tool's sandbox is created on first use, so episodes that never run code
    never pay for one.
    """

    sandbox_backend: str = "local"
    """Backend name passed to ``amrsd_envs.sandbox.make_sandbox`` ("local" or "docker")."""
    sandbox_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments (limits) for ``make_sandbox``."""
    sandbox: Any | None = None
    """A ready sandbox to use instead of creating one; the context then does not close it."""
    sandbox_factory: Callable[[], Any] | None = None
    """Called on first use to get a sandbox owned by someone else (e.g. the env shares one across
    episodes); the context does not close it. Takes precedence over sandbox_backend."""
    python_timeout_s: float = 10.0
    """Wall-clock limit of one python tool call, enforced by the sandbox."""
    python_memory_mb: int = 512
    """Memory limit of one python tool call, enforced by the sandbox."""
    sqlite_db: Path | str | sqlite3.Connection | None = None
    """The episode's SQLite world (a file path, or an open connection), or None if it has none."""
    sql_timeout_s: float = 2.0
    """A SQL statement running longer than this is interrupted."""
    sql_max_rows: int = 50
    """At most this many result rows are shown; the rest are counted, not printed."""
    allowed_hosts: frozenset[str] = frozenset()
    """``host`` or ``host:port`` entries http_request may reach (exact match after URL parsing)."""
    http_base_url: str | None = None
    """Base URL of the episode's HTTP service, if any (told to the model by the task prompt)."""
    http_timeout_s: float = 5.0
    """Connect/read timeout of one HTTP request."""
    data_dir: Path = field(default_factory=default_data_dir)
    """Directory holding elements.json, constants.json and facts.json for the lookup tool."""
    calls_per_turn: int = 4
    """Tool calls run per assistant message; further calls in the same message get an error."""
    calls_total: int = 16
    """Tool calls run per episode; further calls get an error."""
    messages_per_turn: int = 12
    """Tool messages answering one assistant message (at least ``calls_per_turn + 1`` are used); calls and parse
    errors beyond are summed up in the last one."""
    output_limit_chars: int = 4000
    """Each tool message is cut to this many characters, with a [truncated] marker."""
    calls_made: int = field(default=0, init=False)
    """Tool calls run so far in this episode (counted by ``execute_tool_calls``)."""

    _owned_sandbox: Any | None = field(default=None, init=False, repr=False)
    _sql_connection: sqlite3.Connection | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("python_timeout_s", "sql_timeout_s", "http_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"ToolContext.{name} must be a positive number of seconds, got {value!r}")
        counts = ("python_memory_mb", "sql_max_rows", "calls_per_turn", "calls_total", "messages_per_turn")
        for name in (*counts, "output_limit_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ToolContext.{name} must be a positive integer, got {value!r}")
        if self.output_limit_chars < 100:
            raise ValueError(
                f"ToolContext.output_limit_chars={self.output_limit_chars} leaves no room for an error "
                "message; use at least 100"
            )
        if isinstance(self.allowed_hosts, str):
            raise TypeError(
                "ToolContext.allowed_hosts must be a collection of 'host[:port]' strings, not one string "
                f"({self.allowed_hosts!r}); wrap it: frozenset({{{self.allowed_hosts!r}}})"
            )
        self.allowed_hosts = frozenset(normalize_host(h) for h in self.allowed_hosts)
        self.data_dir = Path(self.data_dir)
        if isinstance(self.sqlite_db, str):
            self.sqlite_db = Path(self.sqlite_db)

    def get_sandbox(self) -> Any:
        """The sandbox the python tool runs in: ``sandbox``, else ``sandbox_factory()``, else one
        created on first use with ``make_sandbox(sandbox_backend, **sandbox_options)`` and owned here."""
        if self.sandbox is not None:
            return self.sandbox
        if self.sandbox_factory is not None:
            self.sandbox = self.sandbox_factory()
            return self.sandbox
        if self._owned_sandbox is None:
            # Imported here so the tools (and the env) import without the sandbox package's deps.
            from amrsd_envs.sandbox import make_sandbox

            self._owned_sandbox = make_sandbox(self.sandbox_backend, **self.sandbox_options)
        return self._owned_sandbox

    def get_sql_connection(self) -> sqlite3.Connection:
        """The connection to the episode's SQLite world (opened on first use, in autocommit mode).

        Raises ``LookupError`` when the episode has no database.
        """
        if self.sqlite_db is None:
            raise LookupError("this episode has no SQLite database")
        if isinstance(self.sqlite_db, sqlite3.Connection):
            return self.sqlite_db
        if self._sql_connection is None:
            path = Path(self.sqlite_db)
            if not path.is_file():
                raise LookupError(f"the episode's SQLite database {path} does not exist")
            # Autocommit: every statement the model runs is durable at once, so the verifier (which
            # opens the file itself) sees exactly the state the model left.
            self._sql_connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        return self._sql_connection

    def close(self) -> None:
        """Release the sandbox and SQLite connection this context created (idempotent)."""
        if self._sql_connection is not None:
            self._sql_connection.close()
            self._sql_connection = None
        sandbox, self._owned_sandbox = self._owned_sandbox, None
        if sandbox is not None:
            closer = getattr(sandbox, "close", None)
            if callable(closer):
                closer()
            else:
                sandbox.__exit__(None, None, None)

    def __enter__(self) -> ToolContext:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
