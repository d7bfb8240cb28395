"""Types shared by every sandbox backend: the protocol, the result, isolation levels, limits."""

from __future__ import annotations

import base64
import enum
import math
import posixpath
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 512
DEFAULT_PIDS = 64
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024
DEFAULT_FSIZE_MB = 64


class SandboxError(RuntimeError):
    """A sandbox could not be created or used (missing engine, isolation weaker than required, ...).

    Never raised for anything the sandboxed code does: that always comes back as an :class:`ExecResult`.
    """


class IsolationLevel(enum.IntEnum):
    """How strongly a backend separates code from the host; ordered, so ``>=`` compares strength.

    NONE: a plain process; nothing limited (no backend chooses it; it is the weakest ``require=``).
    RLIMITS: a separate process with rlimits (address space, CPU, file size, processes, no core).
    NAMESPACES: RLIMITS plus Linux user/pid/net/ipc/uts/mount namespaces (``unshare``); the host
        filesystem stays readable with the sandbox user's permissions, except a private ``/tmp``.
    BWRAP: NAMESPACES plus a bubblewrap filesystem view of only the read-only system directories
        (/usr, /lib, /lib64, /bin, /etc) and a private tmpfs; nothing else of the host is visible.
    CONTAINER: a Docker container: its own root filesystem (read-only), no network, and cgroup limits
        on memory, processes and CPU enforced by the kernel for the whole container.
    """

    NONE = 0
    RLIMITS = 1
    NAMESPACES = 2
    BWRAP = 3
    CONTAINER = 4


class ExecResult(BaseModel):
    """The outcome of one :meth:`Sandbox.run` call; never raised, always returned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stdout: str = Field(description="Standard output, UTF-8 decoded (invalid bytes replaced), capped.")
    stderr: str = Field(description="Standard error, UTF-8 decoded (invalid bytes replaced), capped.")
    exit_code: int = Field(
        description="Exit status as subprocess reports it: 0 success, >0 the program's code, "
        "-N killed by signal N (-9 after a timeout)."
    )
    timed_out: bool = Field(description="The call hit its timeout and every process of it was killed.")
    duration_s: float = Field(description="Wall time of the program inside the sandbox, in seconds.")
    truncated: bool = Field(description="stdout or stderr was longer than the output cap and was cut.")

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0 within its time."""
        return self.exit_code == 0 and not self.timed_out


@runtime_checkable
class Sandbox(Protocol):
    """Runs untrusted Python code in isolation. A context manager; ``close()`` frees everything."""

    isolation: IsolationLevel

    def run(
        self,
        code: str,
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        files: dict[str, str | bytes] | None = None,
        stdin: str | None = None,
    ) -> ExecResult:
        """Run ``code`` as ``python -c`` would, in a fresh working directory holding ``files``."""
        ...

    def close(self) -> None:
        """Stop every process and container the sandbox started. Idempotent."""
        ...

    def __enter__(self) -> Sandbox: ...

    def __exit__(self, *exc: object) -> None: ...


def check_timeout(timeout_s: float, name: str = "timeout_s") -> float:
    """Validate a timeout in seconds: finite and positive."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(timeout_s).__name__}")
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {timeout_s!r}")
    return float(timeout_s)


def check_positive_int(value: int, name: str, minimum: int = 1) -> int:
    """Validate an integer limit such as ``memory_mb`` or ``pids``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def encode_files(files: dict[str, str | bytes] | None) -> dict[str, str]:
    """Validate file names (relative, no '..') and base64-encode contents for the wire."""
    if files is None:
        return {}
    if not isinstance(files, dict):
        raise TypeError(f"files must be a dict of relative path -> str | bytes, got {type(files).__name__}")
    encoded: dict[str, str] = {}
    for name, content in files.items():
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"file name {name!r} must be a non-empty string without NUL bytes")
        normal = posixpath.normpath(name)
        if name.startswith("/") or normal == "." or normal.startswith("../") or normal == "..":
            raise ValueError(
                f"file name {name!r} must be a relative path inside the working directory "
                "(no leading '/', no '..')"
            )
        if isinstance(content, str):
            raw = content.encode("utf-8")
        elif isinstance(content, (bytes, bytearray, memoryview)):
            raw = bytes(content)
        else:
            raise TypeError(f"content of file {name!r} must be str or bytes, got {type(content).__name__}")
        encoded[normal] = base64.b64encode(raw).decode("ascii")
    return encoded


def encode_stdin(stdin: str | None) -> str | None:
    """Validate and base64-encode the call's standard input."""
    if stdin is None:
        return None
    if not isinstance(stdin, str):
        raise TypeError(f"stdin must be a str or None, got {type(stdin).__name__}")
    return base64.b64encode(stdin.encode("utf-8")).decode("ascii")


def check_code(code: str) -> str:
    if not isinstance(code, str):
        raise TypeError(f"code must be a str of Python source, got {type(code).__name__}")
    return code
